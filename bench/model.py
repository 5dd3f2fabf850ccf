"""Cost of one training episode of SA-CT and its baselines at ResNet-50 dims, against its FLOPs.

For each model: forward+backward time of one N-way K-shot episode (median of --repeats), the
analytic FLOP count, this machine's measured fp32 matmul rate, and

    ratio = time / (FLOPs ÷ matmul rate)

i.e. how many times slower the step runs than a perfect large matmul doing the same arithmetic.
It also splits the forward pass into `embed` (per video) and `match` (per episode), and reports the
peak memory of the step.

    .venv/bin/python bench/model.py                       # 2 threads, CPU, ResNet-50 dims
    .venv/bin/python bench/model.py --device cuda --json out.json

The step runs as `sact train` runs it: under the autocast `sact train` picks for the device (bf16
on a GPU with native bf16, fp16 before Ampere, none on the CPU), and the matmul probe runs in the
same precision (bf16 / fp16 operands; fp32 ones under the process's TF32 setting, which the model's
fp32 matmuls share). ``--no-amp`` times both in fp32.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from math import comb
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sact.common.devices import autocast_for, synchronize
from sact.fewshot.heads import FewShotHead
from sact.fewshot.kinds import create_model


def sact_flops(*, n: int, k: int, q: int, t: int, p: int, d: int, d_k: int, tmixer: bool) -> dict:
    """Forward FLOPs per stage (multiply-add = 2), for N*K support and Q query videos."""
    videos = n * k + q
    t_out = t // 2 if tmixer else t
    stages = {}
    if tmixer:
        frame_mlps = 2 * p * d * (t * t + t * t + t * (t // 2) + (t // 2) ** 2)  # W1, W2, W5, W6
        channel_mlps = 2 * p * d * d * (2 * t + 2 * t_out)  # W3, W4 on T frames; W7, W8 on T'
        stages["tmixer"] = videos * (frame_mlps + channel_mlps)
    stages["cpe"] = videos * 2 * 9 * t_out * p * d
    stages["projections"] = videos * 3 * 2 * t_out * p * d * d_k  # W_s, W_q, W_v
    stages["scores"] = 2 * n * q * t_out * p * (k * p) * d_k  # LN(W_s f) · LN(W_q f)
    stages["prototypes"] = 2 * n * q * p * (t_out * k * p) * d_k  # Σ_{i,k,m} ã W_v Φ
    return stages


def trx_flops(*, n: int, k: int, q: int, t: int, d: int, d_k: int, cardinalities) -> dict:
    videos = n * k + q
    stages = {"projections": 0, "scores": 0, "prototypes": 0}
    for c in cardinalities:
        tuples = comb(t, c)
        stages["projections"] += videos * 2 * 2 * tuples * c * d * d_k  # keys and values
        stages["scores"] += 2 * n * q * tuples * (k * tuples) * d_k
        stages["prototypes"] += 2 * n * q * tuples * (k * tuples) * d_k
    return stages


def protonet_flops(*, n: int, k: int, q: int, t: int, p: int, d: int) -> dict:
    return {"pooling": (n * k + q) * t * p * d, "distances": 3 * n * q * d}


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def timed_against_matmul(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    matmul_size: int,
    dtype: torch.dtype,
) -> tuple[list[float], list[float]]:
    """Wall times of fn, each run followed by one large matmul in ``dtype`` (the precision the
    step's matmuls run in), after one warm-up of both.

    The matmul's FLOP/s is the machine's practical ceiling at that moment. Timing the two back to
    back, repeat by repeat, keeps the ratio honest on a machine whose load changes during the run.
    Returns (fn seconds, matmul FLOP/s) per repeat.
    """
    a = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    b = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    fn()
    seconds(lambda: a @ b, device)
    step_seconds, rates = [], []
    for _ in range(repeats):
        step_seconds.append(seconds(fn, device))
        rates.append(2 * matmul_size**3 / seconds(lambda: a @ b, device))
    return step_seconds, rates


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of fn over `repeats` runs, after one warm-up run."""
    fn()
    return statistics.median(seconds(fn, device) for _ in range(repeats))


def make_episode(args: argparse.Namespace, device: torch.device):
    """Random float16 features (the store's dtype; models cast them) for one episode, seeded."""
    generator = torch.Generator(device=device).manual_seed(0)
    n, k, q, p = args.way, args.shot, args.way * args.queries, args.grid * args.grid
    # drawn in float16 directly: a float32 draw would raise the memory baseline by its size
    draw = {"generator": generator, "device": device, "dtype": torch.float16}
    support = torch.randn(n * k, args.frames, p, args.dim, **draw)  # (N*K, T, P, D)
    query = torch.randn(q, args.frames, p, args.dim, **draw)  # (Q, T, P, D)
    labels = torch.arange(n, device=device).repeat(k)  # (N*K,)
    targets = torch.arange(n, device=device).repeat(args.queries)  # (Q,)
    return support, labels, query, targets


def training_step(
    model: FewShotHead,
    support,
    labels,
    query,
    targets,
    *,
    autocast: AbstractContextManager,
    scaler: torch.amp.GradScaler,
) -> None:
    """Forward, and backward where there is something to train (ProtoNet has no parameters), as
    `sact train` does it: the forward under autocast, the loss in float32, scaled for float16."""
    with autocast:
        logits = model(support, labels, query)
    if any(True for _ in model.parameters()):
        scaler.scale(torch.nn.functional.cross_entropy(logits.float(), targets)).backward()
        model.zero_grad(set_to_none=True)


def peak_memory(
    args: argparse.Namespace, kind: str, extra: dict, *, autocast: AbstractContextManager
) -> int:
    """Bytes one training step needs above the model and the episode's inputs.

    CUDA: the allocator's high-water mark, under ``autocast``. CPU has no allocator statistics
    (nor autocast in `sact train`), so the step runs once in a fresh process and the growth of
    that process's peak resident set is the answer.
    """
    device = torch.device(args.device)
    if device.type != "cuda":
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            return pool.apply(cpu_peak_memory, (args, kind, extra))
    support, labels, query, targets = make_episode(args, device)
    model = create_model(kind, dim=args.dim, frames=args.frames, grid=args.grid, **extra).to(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # scaling costs no memory
    training_step(model, support, labels, query, targets, autocast=autocast, scaler=scaler)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def resident_peak() -> int:
    """Peak resident set of this process in bytes.

    Linux's VmHWM belongs to the address space and starts afresh in a spawned process; ru_maxrss
    does not (it survives fork + exec, so a child would inherit the parent's peak).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def cpu_peak_memory(args: argparse.Namespace, kind: str, extra: dict) -> int:
    torch.set_num_threads(args.threads)
    support, labels, query, targets = make_episode(args, torch.device("cpu"))
    model = create_model(kind, dim=args.dim, frames=args.frames, grid=args.grid, **extra)
    before = resident_peak()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    training_step(model, support, labels, query, targets, autocast=nullcontext(), scaler=scaler)
    return resident_peak() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="autocast as sact train picks it for the device (none on the CPU)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5, help="queries per class")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--d-k", type=int, default=1152)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    console = Console()
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        console.print(f"[red]error:[/] device {args.device!r} is not usable: {error}")
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    autocast, amp_dtype = autocast_for(device) if args.amp else (nullcontext(), None)
    matmul_dtype = amp_dtype or torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    precision = str(matmul_dtype).removeprefix("torch.")
    if matmul_dtype == torch.float32:
        precision += f" (float32 matmul precision {torch.get_float32_matmul_precision()!r})"

    n, k, q = args.way, args.shot, args.way * args.queries
    t, p, d, d_k = args.frames, args.grid * args.grid, args.dim, args.d_k
    support, labels, query, targets = make_episode(args, device)

    shape = dict(n=n, k=k, q=q, t=t, d=d, d_k=d_k)
    candidates = {
        "SA-CT": (
            "sact",
            {"d_k": d_k},
            sact_flops(**shape, p=p, tmixer=True),
        ),
        "SA-CT, no TMixer": (
            "sact",
            {"d_k": d_k, "tmixer": False},
            sact_flops(**shape, p=p, tmixer=False),
        ),
        "TRX": ("trx", {"d_k": d_k}, trx_flops(**shape, cardinalities=(2, 3))),
        "Nearest mean": ("nearest-mean", {}, protonet_flops(n=n, k=k, q=q, t=t, p=p, d=d)),
    }

    rows = []
    for name, (kind, extra, stages) in candidates.items():
        console.print(f"[bold]{name}[/]: {n}-way {k}-shot, {q} queries, T={t} P={p} D={d}")
        model = create_model(kind, dim=d, frames=t, grid=args.grid, **extra).to(device)
        trainable = any(True for _ in model.parameters())
        memory = peak_memory(args, kind, extra, autocast=autocast)
        step_seconds, rates = timed_against_matmul(
            lambda model=model: training_step(
                model, support, labels, query, targets, autocast=autocast, scaler=scaler
            ),
            device,
            args.repeats,
            args.matmul_size,
            matmul_dtype,
        )
        with torch.no_grad(), autocast:
            pool = torch.cat([support, query])
            embed_time = timed(
                lambda model=model, pool=pool: model.embed(pool), device, args.repeats
            )
            embedded = model.embed(pool)
            s_emb, q_emb = embedded[: n * k], embedded[n * k :]
            match_time = timed(
                lambda model=model, s=s_emb, e=q_emb: model.match(s, labels, e),
                device,
                args.repeats,
            )
        forward_flops = sum(stages.values())
        # backward of a matmul costs two matmuls (input and weight gradients): step ≈ 3 forwards
        step_flops = 3 * forward_flops if trainable else forward_flops
        rows.append(
            {
                "model": name,
                "kind": kind,
                "config": model.config(),
                "trainable": trainable,
                "forward_flops_per_stage": stages,
                "step_flops": step_flops,
                "step_seconds": statistics.median(step_seconds),
                "step_seconds_all": step_seconds,
                "matmul_flops_per_second_all": rates,
                # per repeat: how many times longer than the matmul ceiling needs for these FLOPs
                "ratio": statistics.median(
                    took * rate / step_flops for took, rate in zip(step_seconds, rates, strict=True)
                ),
                "ideal_seconds": step_flops / statistics.median(rates),
                "embed_seconds": embed_time,
                "match_seconds": match_time,
                "peak_memory_bytes": memory,
            }
        )
        del model

    rate = statistics.median(r for row in rows for r in row["matmul_flops_per_second_all"])

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    title = (
        f"one {n}-way {k}-shot episode, {q} queries, T={t} P={p} D={d} d_k={d_k} · "
        f"{device.type} ({device_name or platform.machine()}), {args.threads} threads · "
        f"{precision} matmul ({args.matmul_size}³) {rate / 1e9:.0f} GFLOP/s, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    table = Table(title=title)
    for column in ("model", "GFLOP (step)", "fwd+bwd s", "ideal s", "ratio", "embed s",
                   "match s", "peak MiB"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(
            row["model"] + ("" if row["trainable"] else " (forward only)"),
            f"{row['step_flops'] / 1e9:.1f}",
            f"{row['step_seconds']:.3f}",
            f"{row['ideal_seconds']:.3f}",
            f"{row['ratio']:.2f}",
            f"{row['embed_seconds']:.3f}",
            f"{row['match_seconds']:.4f}",
            f"{row['peak_memory_bytes'] / 2**20:.0f}",
        )
    console.print(table)
    stage_table = Table(title="SA-CT forward GFLOP per stage")
    for stage in rows[0]["forward_flops_per_stage"]:
        stage_table.add_column(stage, justify="right")
    stage_table.add_row(*(f"{v / 1e9:.2f}" for v in rows[0]["forward_flops_per_stage"].values()))
    console.print(stage_table)

    if args.json:
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "device": args.device,
            "device_name": device_name,
            "threads": args.threads,
            "torch": torch.__version__,
            "amp": None if amp_dtype is None else str(amp_dtype),
            "matmul_precision": precision,
            "matmul_flops_per_second": rate,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
