"""Precision policies (fewshot/precision.py): each runs, float32 is today's CPU path bit for bit,
`match` stays IEEE float32, the TF32 switches come back, and a run records its policy."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sact.cli import app
from sact.fewshot.config import PRECISIONS, EvalConfig, TrainConfig, read_train_config
from sact.fewshot.evaluation import evaluate
from sact.fewshot.precision import (
    POLICIES,
    Precision,
    resolve_precision,
    resolved_name,
    tf32_switches,
)
from sact.fewshot.records import DIGEST_CHARS
from sact.fewshot.training import train
from tests.test_model import make_episode, make_model

CPU = torch.device("cpu")
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def forward_and_gradients(precision: Precision | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every parameter's gradient of one episode's cross-entropy, as `sact train`
    computes them (the forward under the policy, the backward under its TF32 switches)."""
    model = make_model(input_norm=True)
    support, labels, query = make_episode()
    targets = torch.arange(3).repeat(2)[:5]
    if precision is None:  # sact before policies: no context at all on the CPU
        logits = model(support.half(), labels, query.half())
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()
    else:
        with precision:
            logits = model(support.half(), labels, query.half())
        with precision.float32_matmuls():
            torch.nn.functional.cross_entropy(logits.float(), targets).backward()
    return logits.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    ("name", "same_as"),
    [
        ("float32", None),
        ("auto", None),
        ("legacy", None),
        ("tf32", None),  # the CPU has no TF32: its float32 stays IEEE
        ("bf16-keys-tf32", "bf16-keys"),
    ],
)
def test_float32_on_the_cpu_is_todays_path_bit_for_bit(name, same_as):
    precision = resolve_precision(name, CPU)
    reference = None if same_as is None else resolve_precision(same_as, CPU)
    exact, exact_grads = forward_and_gradients(reference)
    logits, grads = forward_and_gradients(precision)
    assert torch.equal(logits, exact)
    assert all(torch.equal(g, e) for g, e in zip(grads, exact_grads, strict=True))
    # TF32 policies: the CPU has no TF32, and the user is told so; the others need no note
    assert (precision.note is not None) == POLICIES[precision.name].tf32


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_trains_and_embeds_in_its_dtypes(name):
    precision = resolve_precision(name, CPU)
    logits, grads = forward_and_gradients(precision)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model = make_model()
    support, _, _ = make_episode()
    with torch.no_grad(), precision:
        embedding = model.embed(support)
    policy = POLICIES[name]
    assert embedding.support_keys.dtype == embedding.query_keys.dtype == policy.keys
    assert embedding.values.dtype == policy.values


@pytest.mark.parametrize("name", ["bf16", "bf16-keys", "fp16-keys"])
def test_match_computes_in_float32_under_every_policy(name):
    """The half-precision embeddings, matched under the policy, give exactly what `match` gives
    on the same embeddings widened to float32 outside any policy."""
    model = make_model().eval()
    support, labels, query = make_episode()
    precision = resolve_precision(name, CPU)
    with torch.no_grad(), precision:
        s, q = model.embed(support), model.embed(query)
        matched = model.match(s, labels, q)
    widened = [
        type(e)(*(f.float() for f in (e.support_keys, e.query_keys, e.values))) for e in (s, q)
    ]
    with torch.no_grad():
        reference = model.match(widened[0], labels, widened[1])
    assert matched.dtype == torch.float32
    assert torch.equal(matched, reference)


def test_tf32_switches_are_scoped():
    """On CUDA the switches are process-wide: each block sets them and puts back what it found,
    also when it fails. (No GPU is needed to set them.)"""
    cuda = torch.device("cuda")
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    with tf32_switches(cuda, True):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        with tf32_switches(cuda, False):  # match inside a TF32 forward
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError), tf32_switches(cuda, True):
        raise RuntimeError("a failed step")
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    with tf32_switches(CPU, True):  # the CPU's settings are never touched
        assert torch.get_float32_matmul_precision() == before[0]


def test_auto_and_legacy_resolve_per_device(monkeypatch):
    assert resolved_name("auto", CPU) == resolved_name("legacy", CPU) == "float32"
    cuda = torch.device("cuda")
    monkeypatch.setattr("sact.fewshot.precision.bf16_is_native", lambda device: True)
    assert resolved_name("auto", cuda) == "bf16-keys-tf32"
    assert resolved_name("legacy", cuda) == "bf16-keys"  # what sact ran on a GPU before
    monkeypatch.setattr("sact.fewshot.precision.bf16_is_native", lambda device: False)
    assert resolved_name("auto", cuda) == resolved_name("legacy", cuda) == "fp16-keys"
    assert set(PRECISIONS) == {"auto", "legacy", *POLICIES}


@pytest.fixture
def workdir(tmp_path, monkeypatch, synthetic_store):
    shutil.copytree(synthetic_store.location, tmp_path / "feats.zarr")
    monkeypatch.chdir(tmp_path)
    return tmp_path


TRAIN = ["train", "--feats", "feats.zarr", "--way", "3", "--shot", "2", "--query", "2"]
SMALL = ["--d-k", "16", "--iterations", "2", "--val-every", "2", "--val-episodes", "4"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([*TRAIN, "--precision", "fp8"], "--precision must be one of auto, float32, tf32"),
        ([*TRAIN, "--step", "jit"], "--step must be one of auto, eager, batched"),
        (["evaluate", "--run", ".", "--precision", "half"], "--precision must be one of auto"),
        (
            [*TRAIN, "--step", "graphs", "--device", "cpu", "--out", "runs/g"],
            "--step graphs replays CUDA graphs, which need a CUDA device; on cpu use eager",
        ),
    ],
)
def test_bad_precision_or_step_is_one_line(workdir, arguments, message):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (workdir / "runs").exists()  # refused before any file was written


def test_a_run_records_its_policy_resolved_and_old_runs_read_as_legacy(workdir, synthetic_store):
    common = {
        "feats": "feats.zarr", "split": synthetic_store.split, "way": 3, "shot": 2, "query": 2,
        "d_k": 16, "iterations": 2, "val_every": 2, "val_episodes": 4, "device": "cpu",
    }  # fmt: skip
    train(TrainConfig(**common, out="runs/auto"))
    train(TrainConfig(**common, out="runs/bf16", precision="bf16-keys"))
    saved = json.loads((workdir / "runs/auto/config.json").read_text())
    assert saved["train"]["precision"] == "float32"  # auto, as it resolved on the CPU
    assert saved["step_mode"] == "eager"
    assert read_train_config(workdir / "runs/bf16/config.json").precision == "bf16-keys"
    # a run saved before policies existed trained under the legacy policy
    del saved["train"]["precision"]
    (workdir / "old.json").write_text(json.dumps(saved))
    assert read_train_config(workdir / "old.json").precision == "legacy"

    scored = {
        name: evaluate(
            EvalConfig(run="runs/auto", shots=(1,), way=3, episodes=4, device="cpu", precision=name)
        )
        for name in ("auto", "bf16-keys")
    }
    assert [scored[name].precision for name in scored] == ["float32", "bf16-keys"]
    records = {name: json.loads(Path(r.path).read_text()) for name, r in scored.items()}
    assert records["bf16-keys"]["precision"] == "bf16-keys"
    # another policy is another record; float32 on the CPU keeps the name records had before
    assert scored["auto"].path != scored["bf16-keys"].path
    old_parts = [
        records["auto"]["weights"],
        *(s["episodes_digest"] for s in records["auto"]["settings"]),
    ]
    old_key = hashlib.sha256(" ".join(old_parts).encode()).hexdigest()[:DIGEST_CHARS]
    assert scored["auto"].path.endswith(f"-{old_key}.json")
