"""``sact extract`` under torchrun: two CPU processes (gloo) write one feature set, and the result
is bitwise the store a single process writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sact.common.claims import CLAIMS_PREFIX, Claim
from sact.common.distributed import Rank, device_for, joined, owned_shards, rank_from_env
from sact.common.errors import SactError
from sact.store.backends import open_feature_set
from sact.store.feature_set import PER_VIDEO_ARRAYS
from sact.testing.extraction import TINY, extract_in_this_process, tiny_cli_options

REPO = Path(__file__).resolve().parents[1]
SHARDS = {"shard_size": 2, "batch_size": 2}
NAME = str(TINY["name"])


def extract_command(videos: Path, out: Path) -> list[str]:
    return ["extract", "--videos", str(videos), "--out", str(out), *tiny_cli_options(**SHARDS)]


def extract_here(videos: Path, out: Path) -> None:
    """The same extraction as one plain process (this one), on one thread like each rank."""
    extract_in_this_process(videos, out, **SHARDS)


def run(command: list[str]) -> subprocess.CompletedProcess:
    # One thread per rank, as in extract_here: the float sums then happen in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PYTHONPATH kept: this checkout's sact
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        env.pop(name, None)
    finished = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished


def assert_same_feature_set(first: Path, second: Path) -> None:
    one, other = open_feature_set(str(first), NAME), open_feature_set(str(second), NAME)
    for name in PER_VIDEO_ARRAYS:
        np.testing.assert_array_equal(one.group[name][:], other.group[name][:], err_msg=name)
    everything = np.arange(len(one))
    np.testing.assert_array_equal(one.read(everything), other.read(everything))
    identity = one.attrs["identity"]
    assert {key: one.attrs[key] for key in identity} == {key: other.attrs[key] for key in identity}


def shard_holders(store: Path) -> dict[str, list[Claim]]:
    """Every claim ever written, by shard: who extracted what."""
    folder = store / CLAIMS_PREFIX / NAME
    return {
        topic.name: [Claim.from_json(path.read_bytes()) for path in sorted(topic.glob("*.json"))]
        for topic in sorted(folder.glob("shard-*"))
    }


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_one_process(video_folder: Path, tmp_path: Path) -> None:
    single, distributed = tmp_path / "single.zarr", tmp_path / "torchrun.zarr"
    extract_here(video_folder, single)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    run([*torchrun, "-m", "sact.cli", *extract_command(video_folder, distributed)])
    assert open_feature_set(str(distributed), NAME).done.all()
    assert_same_feature_set(single, distributed)
    holders = shard_holders(distributed)
    assert len(holders) == 3  # 5 videos in shards of 2
    # Each shard was extracted once (one claim generation), by the rank that owns it.
    assert all(len(claims) == 1 and claims[0].released for claims in holders.values())
    pids = [claims[0].holder.pid for claims in holders.values()]
    assert pids[0] == pids[2] != pids[1]  # rank 0: shards 0 and 2; rank 1: shard 1


def test_ranks_own_disjoint_whole_shards() -> None:
    shards = [0, 2, 3, 5, 8, 9, 11]
    owned = [owned_shards(shards, Rank(rank, 3, rank)) for rank in range(3)]
    assert sorted(shard for mine in owned for shard in mine) == shards
    assert all(set(a).isdisjoint(b) for i, a in enumerate(owned) for b in owned[i + 1 :])


def test_rank_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert rank_from_env() == Rank(0, 1, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert rank_from_env() == Rank(3, 4, 1, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(SactError, match="out of range"):
        rank_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(SactError, match="not an integer"):
        rank_from_env()


@pytest.mark.parametrize(
    ("rank", "visible", "device"),
    [
        (Rank(3, 8, 3, 8), 8, "cuda:3"),  # one machine, 8 GPUs
        (Rank(11, 16, 3, 8), 8, "cuda:3"),  # second machine: LOCAL_RANK, not RANK
        (Rank(3, 8, 3, 8), 1, "cuda:0"),  # CUDA_VISIBLE_DEVICES per rank: each sees one GPU
        (Rank(5, 8, 5, 8), 4, "cuda:1"),  # two ranks per GPU
        (Rank(0, 1, 0, 1), 8, "cuda"),  # a single process keeps the current device
    ],
)
def test_each_rank_takes_the_gpu_of_its_local_rank(
    monkeypatch: pytest.MonkeyPatch, rank: Rank, visible: int, device: str
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert device_for(rank, torch.device("cuda")) == torch.device(device)
    assert device_for(rank, torch.device("cpu")) == torch.device("cpu")


def test_an_explicit_gpu_index_is_refused_with_several_ranks() -> None:
    assert device_for(Rank(0, 1, 0, 1), torch.device("cuda:1")) == torch.device("cuda:1")
    with pytest.raises(SactError, match="names one GPU for all 2 ranks"):
        device_for(Rank(1, 2, 1, 2), torch.device("cuda:0"))


def test_a_single_process_on_a_bare_cuda_device_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first GPU run's failure: `sact extract --device cuda` in one process passed the bare
    device to torch.cuda.set_device, which needs an index (ValueError before any video)."""
    current = []

    def set_device(device: torch.device) -> None:  # torch's check, without a GPU
        if device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index, but got:{device}")
        current.append(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for device in ("cuda", "cuda:1"):
        with joined(Rank(0, 1, 0, 1), device=torch.device(device)) as job:
            assert job.store is None
    assert current == [torch.device("cuda:1")]


RANK_FINISHING_LATE = """
import sys, time
from datetime import timedelta
import torch
from sact.common.distributed import Rank, joined
rank = Rank(int(sys.argv[1]), 2, int(sys.argv[1]), 2)
with joined(rank, device=torch.device("cpu")) as job:
    job.store.set_timeout(timedelta(seconds=0.5))  # any blocking wait would now fail
    job.poll_s = 0.1
    assert not job.setup_failed(False)
    if rank.rank == 1:
        time.sleep(2)  # four times the timeout: rank 0 has long finished its shards
    job.wait_for_all()
print("rank", rank.rank, "done")
"""


def test_a_rank_finishing_early_waits_past_any_timeout(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_FINISHING_LATE, str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], outputs
    assert [output.strip().splitlines()[-1] for output in outputs] == ["rank 0 done", "rank 1 done"]
