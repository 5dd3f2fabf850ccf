"""The one FLOP count of a few-shot head's episode, and its bound on a device: what bench/model.py
and bench/gpu.py divide a step's time by.

The count is analytic, stage by stage (a multiply-add is 2 FLOPs): at small dims it equals what
torch's FlopCounterMode counts for the forward. A training step costs 3 forwards (a matmul's
backward is two matmuls: input and weight gradients). FlopCounterMode is not used for the step:
it counts the depthwise CPE convolution's backward as a dense convolution, D times its real cost
(740 of the 2,632 GFLOP it reports per 5-way 5-shot episode at ResNet-50 dims, where the layer's
forward is 0.36 GFLOP; bench/RESULTS.md).

The bound of a step is Σ over its stages of the stage's FLOPs over the dense matmul rate measured
in the same run at the precision that stage runs in under the policy (fewshot/precision.py):
SA-CT's keys' stages (CPE, W_s, W_q) at the keys' precision, the values' (TMixer, W_v) at the
values', `match` (scores, prototypes) in IEEE float32.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from math import comb

import torch

from sact.fewshot.baselines import TRX, NearestMean
from sact.fewshot.heads import FewShotHead
from sact.fewshot.model import SACT
from sact.fewshot.precision import Precision, tf32_switches

# where each SA-CT stage runs: its path of `embed`, or `match`
SACT_STAGE_PATHS = {
    "tmixer": "values",
    "cpe": "keys",
    "key projections": "keys",
    "value projection": "values",
    "scores": "match",
    "prototypes": "match",
}
BACKWARD_FACTOR = 2  # a matmul's backward: the input's and the weights' gradients
PROBE_REPEATS = 3  # matmul probes timed, the best kept


def sact_flops(
    *, n: int, k: int, q: int, t: int, p: int, d: int, d_k: int, tmixer: bool, cpe: bool = True
) -> dict[str, int]:
    """SA-CT's forward FLOPs per stage, for N*K support and Q query videos."""
    videos = n * k + q
    t_out = t // 2 if tmixer else t
    stages = {}
    if tmixer:
        frame_mlps = 2 * p * d * (t * t + t * t + t * (t // 2) + (t // 2) ** 2)  # W1, W2, W5, W6
        channel_mlps = 2 * p * d * d * (2 * t + 2 * t_out)  # W3, W4 on T frames; W7, W8 on T'
        stages["tmixer"] = videos * (frame_mlps + channel_mlps)
    if cpe:
        stages["cpe"] = videos * 2 * 9 * t_out * p * d  # depthwise 3x3
    stages["key projections"] = videos * 2 * 2 * t_out * p * d * d_k  # W_s, W_q
    stages["value projection"] = videos * 2 * t_out * p * d * d_k  # W_v
    stages["scores"] = 2 * n * q * t_out * p * (k * p) * d_k  # LN(W_s f) · LN(W_q f)
    stages["prototypes"] = 2 * n * q * p * (t_out * k * p) * d_k  # Σ_{i,k,m} ã W_v Φ
    return stages


def trx_flops(
    *, n: int, k: int, q: int, t: int, d: int, d_k: int, cardinalities: Iterable[int]
) -> dict[str, int]:
    """TRX's forward FLOPs per stage (tuples of each cardinality, keys and values)."""
    videos = n * k + q
    stages = {"projections": 0, "scores": 0, "prototypes": 0}
    for c in cardinalities:
        tuples = comb(t, c)
        stages["projections"] += videos * 2 * 2 * tuples * c * d * d_k  # keys and values
        stages["scores"] += 2 * n * q * tuples * (k * tuples) * d_k
        stages["prototypes"] += 2 * n * q * tuples * (k * tuples) * d_k
    return stages


def pooled_flops(*, n: int, k: int, q: int, t: int, p: int, d: int) -> dict[str, int]:
    """The nearest mean's: the mean over frames and patches, then N·Q distances."""
    return {"pooling": (n * k + q) * t * p * d, "distances": 3 * n * q * d}


def forward_flops(model: FewShotHead, *, way: int, shot: int, queries: int) -> dict[str, int]:
    """The head's forward FLOPs per stage for one `way`-way `shot`-shot episode of `queries`
    query videos, read from its config: SA-CT, TRX and the nearest mean are counted."""
    config = model.config()
    frames, patches = config["frames"], model.grid[0] * model.grid[1]
    shape = {"n": way, "k": shot, "q": queries, "t": frames, "d": config["dim"]}
    if isinstance(model, SACT):
        return sact_flops(
            **shape, p=patches, d_k=model.d_k, tmixer=config["tmixer"], cpe=config["cpe"]
        )
    if type(model) is TRX:
        return trx_flops(**shape, d_k=config["d_k"], cardinalities=config["cardinalities"])
    if type(model) is NearestMean:
        return pooled_flops(**shape, p=patches)
    raise ValueError(f"no analytic FLOP count for {type(model).__name__}")


def is_trainable(model: FewShotHead) -> bool:
    return any(parameter.requires_grad for parameter in model.parameters())


def step_flops(model: FewShotHead, *, way: int, shot: int, queries: int) -> int:
    """FLOPs of one training episode: forward and backward (the forward alone when there is
    nothing to train)."""
    forward = sum(forward_flops(model, way=way, shot=shot, queries=queries).values())
    return forward * (1 + BACKWARD_FACTOR) if is_trainable(model) else forward


def stage_precisions(model: FewShotHead, precision: Precision) -> dict[str, str]:
    """The precision each stage's matmuls run in under `precision`: bfloat16, float16, tf32 or
    float32 (IEEE)."""
    policy, on_cuda = precision.policy, precision.device.type == "cuda"

    def label(dtype: torch.dtype) -> str:
        if dtype != torch.float32:
            return str(dtype).removeprefix("torch.")
        return "tf32" if policy.tf32 and on_cuda else "float32"

    paths = {"keys": label(policy.keys), "values": label(policy.values), "match": "float32"}
    stages = forward_flops(model, way=2, shot=1, queries=1)  # only the stage names matter
    if isinstance(model, SACT):
        return {stage: paths[SACT_STAGE_PATHS[stage]] for stage in stages}
    return {stage: paths["keys"] for stage in stages}  # autocast's dtype throughout


def matmul_rate(device: torch.device, precision: str, *, size: int) -> float:
    """FLOP/s of a dense size³ matmul in `precision` (bfloat16, float16: operands in that dtype,
    summed in float32 as autocast does; tf32, float32: float32 operands with TF32 on or off), the
    best of PROBE_REPEATS after a warm-up."""
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision, torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    with tf32_switches(device, precision == "tf32"):
        a @ b
        best = float("inf")
        for _ in range(PROBE_REPEATS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def step_bound_seconds(
    model: FewShotHead,
    precision: Precision,
    rates: dict[str, float],
    *,
    way: int,
    shot: int,
    queries: int,
) -> float:
    """The least time one training episode can take: each stage's FLOPs (3x for the backward)
    over the measured matmul rate (FLOP/s, by precision label) of the precision it runs in."""
    stages = forward_flops(model, way=way, shot=shot, queries=queries)
    where = stage_precisions(model, precision)
    factor = 1 + BACKWARD_FACTOR if is_trainable(model) else 1
    return sum(factor * flops / rates[where[stage]] for stage, flops in stages.items())
