"""Hub weights offline: cached weights load without the network, missing ones fail in seconds.

The hub is made unreachable by pointing huggingface_hub at a local port nobody listens on; without
sact's check, huggingface_hub retries such a hub for about a minute before timm gives up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sact.extract.backbone import FrozenBackbone, load_backbone
from sact.extract.hub import HubError, hub_weights

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
FAIL_WITHIN_S = 5.0


def closed_endpoint() -> str:
    """http://127.0.0.1:PORT where PORT was free a moment ago: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and a hub that refuses connections; returns the cache."""
    endpoint = closed_endpoint()
    constants = huggingface_hub.constants
    template = constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def test_unreachable_hub_fails_in_seconds(unreachable_hub: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(HubError) as raised:
        load_backbone("resnet10t")
    assert time.perf_counter() - started < FAIL_WITHIN_S
    message = str(raised.value)
    assert "\n" not in message and "out of reach" in message
    assert "--weights FILE" in message and "HF_HUB_OFFLINE" in message
    assert "timm/resnet10t.c3_in1k/resolve/main/model.safetensors" in message


def test_offline_mode_without_cached_weights_fails_at_once(
    unreachable_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and they are not in the local cache"):
        load_backbone("resnet10t")
    assert time.perf_counter() - started < FAIL_WITHIN_S


def test_cached_hub_weights_load_without_the_network(unreachable_hub: Path) -> None:
    """Weights a past download left in the Hugging Face cache load with the hub out of reach."""
    source = load_backbone("resnet10t", random_init=True, seed=7)
    location = hub_weights("resnet10t")
    assert location is not None and location.filenames[0] == "model.safetensors"
    repo = unreachable_hub / f"models--{location.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    state = source.features.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))

    started = time.perf_counter()
    loaded = load_backbone("resnet10t")
    assert time.perf_counter() - started < FAIL_WITHIN_S
    assert loaded.weights.source == "hub" and loaded.weights.sha256 == source.weights.sha256
    crops = np.zeros((2, 3, loaded.preprocessing.size, loaded.preprocessing.size), np.uint8)
    crops[:, :, 40:90, 60:120] = 200
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(
        FrozenBackbone(loaded, device=cpu)(torch.from_numpy(crops)),
        FrozenBackbone(source, device=cpu)(torch.from_numpy(crops)),
    )


@pytest.mark.slow
def test_sact_extract_offline_is_one_line_in_seconds(tmp_path: Path, video_folder: Path) -> None:
    """The command as a user runs it, the hub unreachable through HF_ENDPOINT: exit status 2 and
    one line long before huggingface_hub's minute of retries (the bound includes the imports)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": closed_endpoint(),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
    }
    command = [sys.executable, "-m", "sact.cli", "extract", "--videos", str(video_folder)]
    command += ["--out", str(tmp_path / "feats.zarr"), "--backbone", "resnet10t", "--workers", "0"]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download the weights"), lines
    assert "--weights FILE" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert elapsed < 40, f"{elapsed:.1f} s"
