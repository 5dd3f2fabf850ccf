"""The one FLOP count (fewshot/flops.py): torch's forward count at small dims, 1,985 GFLOP per
5-way 5-shot episode at ResNet-50 dims, and the bound by each stage's precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sact.fewshot.flops import (
    forward_flops,
    matmul_rate,
    stage_precisions,
    step_bound_seconds,
    step_flops,
)
from sact.fewshot.kinds import create_model
from sact.fewshot.precision import Precision

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("sact", {}),
        ("sact", {"tmixer": False}),
        ("sact", {"cpe": False}),
        ("sact", {"input_norm": True, "distance": "sum"}),
        ("trx", {}),
    ],
)
def test_the_analytic_forward_count_is_torchs(kind, options):
    model = create_model(kind, dim=32, frames=8, grid=3, d_k=16, **options)
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(15, 8, 9, 32, generator=generator)  # 5-way 3-shot
    query = torch.randn(10, 8, 9, 32, generator=generator)
    with FlopCounterMode(display=False) as counter:
        model(support, torch.arange(5).repeat(3), query)
    assert sum(forward_flops(model, way=5, shot=3, queries=10).values()) == (
        counter.get_total_flops()
    )


def test_a_resnet50_episode_and_why_torch_counts_its_step_higher():
    """At ResNet-50 dims (no memory: meta tensors) torch counts 2,632 GFLOP for the step, the
    analytic count 1,985: torch counts the depthwise CPE's weight gradient as a dense convolution,
    D = 2048 times the layer's real cost (740 GFLOP for a layer whose forward is 0.36)."""
    with torch.device("meta"):
        model = create_model("sact", dim=2048, frames=8, grid=7, d_k=1152)
        support = torch.randn(25, 8, 49, 2048, dtype=torch.float16)
        query = torch.randn(25, 8, 49, 2048, dtype=torch.float16)
        targets = torch.arange(5).repeat(5)
    with FlopCounterMode(display=False) as counter:
        logits = model(support, torch.arange(5).repeat(5), query)
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()
    analytic = step_flops(model, way=5, shot=5, queries=25)
    assert round(analytic / 1e9) == 1985 and round(counter.get_total_flops() / 1e9) == 2632
    cpe = counter.get_flop_counts()["SACT.cpe"]
    forward = cpe[torch.ops.aten.convolution]
    assert forward == forward_flops(model, way=5, shot=5, queries=25)["cpe"]
    # the input's gradient counted right (one forward), the weights' D times over
    assert cpe[torch.ops.aten.convolution_backward] == forward * (1 + 2048)
    # without it torch's count is the analytic one less the input gradients the 3x rule counts
    # and autograd skips (the frozen features', the support videos' unused query keys'): 4.7%
    corrected = counter.get_total_flops() - 2047 * forward
    assert 0.95 * analytic < corrected < analytic


def test_the_bound_takes_each_stage_at_its_precision():
    model = create_model("sact", dim=32, frames=8, grid=3, d_k=16)
    cuda = torch.device("cuda")
    mixed = stage_precisions(model, Precision("bf16-keys-tf32", cuda))
    assert mixed == {
        "tmixer": "tf32",
        "cpe": "bfloat16",
        "key projections": "bfloat16",
        "value projection": "tf32",
        "scores": "float32",  # match: IEEE float32 under every policy
        "prototypes": "float32",
    }
    assert set(stage_precisions(model, Precision("bf16-keys-tf32", CPU)).values()) == {
        "bfloat16",
        "float32",
    }  # the CPU has no TF32
    stages = forward_flops(model, way=5, shot=3, queries=10)
    rates = {"tf32": 4.0, "bfloat16": 8.0, "float32": 1.0}
    expected = 3 * sum(flops / rates[mixed[stage]] for stage, flops in stages.items())
    bound = step_bound_seconds(
        model, Precision("bf16-keys-tf32", cuda), rates, way=5, shot=3, queries=10
    )
    assert bound == pytest.approx(expected)
    everything_float32 = step_bound_seconds(
        model, Precision("float32", CPU), {"float32": 2.0}, way=5, shot=3, queries=10
    )
    assert everything_float32 == pytest.approx(step_flops(model, way=5, shot=3, queries=10) / 2.0)


def test_heads_without_a_count_are_refused_and_the_probe_measures():
    with pytest.raises(ValueError, match="no analytic FLOP count for ProtoNet"):
        forward_flops(create_model("protonet", dim=8, frames=4, grid=2), way=2, shot=1, queries=2)
    assert matmul_rate(CPU, "float32", size=64) > 0


def test_flips_against_float64_count_every_policy(synthetic_store, monkeypatch):
    """bench/flips.py (bench/model.py's flips part): every policy, TF32 emulated on the CPU, on
    the same episodes as the float64 reference; float32 flips (almost) nothing."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from flips import policy_flips, test_videos, with_emulated_tf32

    from sact.fewshot.episodes import build_pool, resolve_split
    from sact.store.backends import open_feature_set

    feature_set = open_feature_set(synthetic_store.location)
    pool = build_pool(feature_set, resolve_split(feature_set, synthetic_store.split), "test")
    torch.manual_seed(0)
    model = create_model(
        "sact", dim=feature_set.dim, frames=8, grid=list(feature_set.grid), d_k=16
    ).eval()
    videos = test_videos(feature_set, pool, 8)
    counted = policy_flips(
        model, videos, pool, device=CPU, shots=[1], episodes=20, queries=5, seed=0
    )
    assert counted["predictions"] == {1: 20 * 5 * 5}
    assert set(counted["flips"]) == {
        "float32", "tf32 (emulated)", "bf16-keys", "bf16-keys-tf32 (emulated)", "bf16",
        "fp16-keys",
    }  # fmt: skip
    assert counted["flips"]["float32"][1] <= 5  # 1% of 500: float32's rounding, rarely a flip
    # the emulation rounds the float32 operands: close to float32, not equal
    with torch.no_grad():
        exact = model.embed(videos[:4]).values
        emulated = with_emulated_tf32(model).embed(videos[:4]).values
    assert not torch.equal(exact, emulated)
    torch.testing.assert_close(emulated, exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())
