"""SA-CT's training step at ResNet-50 dims against its FLOP bound, per step mode, and the
predictions each precision policy flips against float64; the heads' costs side by side.

Parts (--parts; default steps,flips, the two issue 20 asks for in one run):

- steps: one training step of --episodes-per-step 5-way 5-shot 25-query episodes (float16
  features as the store holds them) in each step mode the device runs (fewshot/step.py: eager,
  batched, compiled; graphs on CUDA) under --precision: the median time per episode of --repeats
  steps after a warm-up step (which, compiled, is the compile: its time is listed), against the
  bound of fewshot/flops.py, the analytic FLOP count (1,985 GFLOP per episode at these dims) over
  the dense matmul rate of each stage's precision. The rates are probed right after each timed
  step (a size³ matmul), so a ratio holds while a shared machine's load drifts; the bfloat16 and
  float32 (and on CUDA TF32) probes are reported apart.
- flips: a small SA-CT trained here, on a synthetic store (sact.testing.stores; FLIP_SCALES says
  its size), its test videos embedded in float64 and under every policy, TF32 emulated on a CPU
  (bench/flips.py): the share of predictions each policy flips against float64.
- models: SA-CT, SA-CT without TMixer, TRX and the nearest mean: eager step time against the
  bound, the forward split into `embed` (per video) and `match` (per episode), peak memory.

    .venv/bin/python bench/model.py                         # CPU, 2 threads: steps and flips
    .venv/bin/python bench/model.py --quick                 # smaller dims, a few minutes
    .venv/bin/python bench/model.py --parts models          # the heads side by side
    .venv/bin/python bench/model.py --device cuda --json model_gpu.json
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from sact.common.devices import synchronize
from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.config import TrainConfig
from sact.fewshot.episodes import build_pool, resolve_split
from sact.fewshot.flops import (
    forward_flops,
    is_trainable,
    matmul_rate,
    stage_precisions,
    step_bound_seconds,
    step_flops,
)
from sact.fewshot.heads import FewShotHead
from sact.fewshot.kinds import create_model
from sact.fewshot.precision import Precision, resolve_precision
from sact.fewshot.step import BatchedStep, Step, eager_step, resolved_step
from sact.fewshot.training import train
from sact.store.backends import open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

# this script's folder is on the path when it runs
from flips import flips_table, policy_flips, test_videos  # isort: skip

PARTS = ("steps", "flips", "models")
CPU_HALF_PROBE = 512
WAY, SHOT = 5, 5


@dataclass(frozen=True)
class Dims:
    """The episode's shape: ResNet-50's by default, smaller with --quick."""

    frames: int = 8
    grid: int = 7
    dim: int = 2048
    d_k: int = 1152
    queries: int = 5  # per class


QUICK_DIMS = Dims(grid=4, dim=256, d_k=128)


@dataclass(frozen=True)
class FlipScale:
    """The synthetic store and the short training the flips are counted on."""

    dim: int
    grid: int
    d_k: int
    iterations: int
    videos_per_class: int
    episodes: int  # per shot


FLIP_SCALES = {
    "full": FlipScale(dim=128, grid=4, d_k=64, iterations=200, videos_per_class=12, episodes=2000),
    "quick": FlipScale(dim=64, grid=2, d_k=32, iterations=100, videos_per_class=10, episodes=300),
}
FLIP_CLASSES = {"train": range(0, 20), "val": range(20, 25), "test": range(25, 30)}


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def make_tasks(dims: Dims, episodes: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """`episodes` episodes of random float16 features (the store's dtype), as the trainer loads
    them: class-major support labels on the CPU, query labels on the device. Seeded."""
    generator = torch.Generator(device=device).manual_seed(0)
    p, q = dims.grid * dims.grid, WAY * dims.queries
    # drawn in float16 directly: a float32 draw would raise the memory baseline by its size
    draw = {"generator": generator, "device": device, "dtype": torch.float16}
    return [
        (
            torch.randn(WAY * SHOT, dims.frames, p, dims.dim, **draw),  # (N*K, T, P, D)
            torch.arange(WAY).repeat_interleave(SHOT),  # (N*K,)
            torch.randn(q, dims.frames, p, dims.dim, **draw),  # (Q, T, P, D)
            torch.arange(WAY, device=device).repeat_interleave(dims.queries),  # (Q,)
        )
        for _ in range(episodes)
    ]


def probe_size(label: str, device: torch.device, size: int) -> int:
    """The probe's size: half precisions on a CPU at most CPU_HALF_PROBE³ (without native bf16
    or fp16 a 2048³ one takes minutes: 0.1-0.2 GFLOP/s on this machine's AVX2 cores)."""
    if device.type != "cuda" and label in ("bfloat16", "float16"):
        return min(size, CPU_HALF_PROBE)
    return size


def probes_for(model: FewShotHead, precision: Precision) -> list[str]:
    """The matmul precisions the model's stages run in under `precision`."""
    return sorted(set(stage_precisions(model, precision).values()))


def time_step_mode(
    mode: str,
    model: FewShotHead,
    tasks: list,
    precision: Precision,
    *,
    repeats: int,
    matmul_size: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Per-episode seconds of `repeats` steps in `mode` after a warm-up step, each followed by
    the matmul probes of the precisions the step runs in; the ratio to the bound, per repeat."""
    device = precision.device
    scaler = torch.amp.GradScaler(device.type, enabled=precision.autocast_dtype == torch.float16)
    step: Step = (
        eager_step
        if mode == "eager"
        else BatchedStep(
            compile_mode={"batched": None, "compiled": "default", "graphs": "reduce-overhead"}[
                mode
            ],
            say=say,
        )
    )

    def one_step() -> None:
        step(model, tasks, precision, scaler)
        model.zero_grad(set_to_none=True)

    warm_up = seconds(one_step, device)
    times, ratios, rates_all = [], [], []
    for _ in range(repeats):
        took = seconds(one_step, device) / len(tasks)
        rates = {
            label: matmul_rate(device, label, size=probe_size(label, device, matmul_size))
            for label in probes_for(model, precision)
        }
        bound = step_bound_seconds(
            model, precision, rates, way=WAY, shot=SHOT, queries=len(tasks[0][3])
        )
        times.append(took)
        ratios.append(took / bound)
        rates_all.append(rates)
    compiled = isinstance(step, BatchedStep) and step.compile_mode is not None
    return {
        "mode": mode,
        "episode_seconds": statistics.median(times),
        "episode_seconds_all": times,
        "ratio": statistics.median(ratios),
        "ratio_all": ratios,
        "matmul_rates_all": rates_all,
        "warm_up_seconds": warm_up,
        "compile_seconds": step.compile_seconds if compiled else None,
        "fell_back_to_eager": bool(compiled and step.fell_back),
    }


def steps_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    dims = QUICK_DIMS if args.quick else Dims()
    precision = resolve_precision(args.precision, device)
    if precision.note:
        console.print(precision.note)
    modes = ["eager", "batched", "compiled"] + (["graphs"] if device.type == "cuda" else [])
    torch.manual_seed(0)
    model = create_model("sact", dim=dims.dim, frames=dims.frames, grid=dims.grid, d_k=dims.d_k)
    model = model.to(device).train()
    tasks = make_tasks(dims, args.episodes_per_step, device)
    queries = WAY * dims.queries
    rows = []
    for mode in modes:
        resolved_step(mode, device)
        console.print(f"step {mode}: {args.episodes_per_step} episodes per step ...")
        rows.append(
            time_step_mode(
                mode,
                model,
                tasks,
                precision,
                repeats=args.repeats,
                matmul_size=args.matmul_size,
                say=console.print,
            )
        )
    probes = {
        label: matmul_rate(device, label, size=probe_size(label, device, args.matmul_size))
        for label in ("float32", "bfloat16", *(["tf32"] if device.type == "cuda" else []))
    }
    return {
        "dims": asdict(dims),
        "precision": precision.name,
        "episodes_per_step": args.episodes_per_step,
        "episode_flops": step_flops(model, way=WAY, shot=SHOT, queries=queries),
        "forward_flops_per_stage": forward_flops(model, way=WAY, shot=SHOT, queries=queries),
        "stage_precisions": stage_precisions(model, precision),
        "matmul_probes": probes,
        "rows": rows,
    }


def steps_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("step mode", "s / episode", "× bound", "per repeat", "compile s"):
        table.add_column(column, justify="left" if column == "step mode" else "right")
    for row in result["rows"]:
        compile_cell = "—" if row["compile_seconds"] is None else f"{row['compile_seconds']:.1f}"
        if row["fell_back_to_eager"]:
            compile_cell = "failed: ran eager"
        table.add_row(
            row["mode"],
            f"{row['episode_seconds']:.3f}",
            f"{row['ratio']:.2f}",
            " / ".join(f"{ratio:.2f}" for ratio in row["ratio_all"]),
            compile_cell,
        )
    return table


def flips_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    """A small SA-CT trained on a synthetic store here, then bench/flips.py's count."""
    scale = FLIP_SCALES["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory() as folder:
        classes = max(r.stop for r in FLIP_CLASSES.values())
        split = write_split_lists(
            Path(folder) / "split", classes, scale.videos_per_class, FLIP_CLASSES
        )
        store = write_synthetic_store(
            Path(folder) / "feats.zarr",
            classes=classes,
            videos_per_class=scale.videos_per_class,
            frames=8,
            grid=(scale.grid, scale.grid),
            dim=scale.dim,
            signal_dims=min(16, scale.dim),
            relu=True,  # a CNN's features are ReLU outputs
        )
        config = TrainConfig(
            feats=store,
            split=str(split),
            d_k=scale.d_k,
            iterations=scale.iterations,
            val_every=scale.iterations,
            val_episodes=50,
            tasks_per_batch=1,
            lr=3e-3,
            warmup=scale.iterations // 10,
            device="cpu",
            out=str(Path(folder) / "run"),
        )
        console.print(f"flips: training SA-CT {scale.iterations} steps on a synthetic store ...")
        trained = train(config)
        checkpoint = read_checkpoint(Path(folder) / "run" / "checkpoints" / "last")
        feature_set = open_feature_set(store)
        pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
        model = checkpoint.build()
        videos = test_videos(feature_set, pool, model.frames)
        console.print(f"flips: {len(pool)} test videos, {scale.episodes} episodes per shot ...")
        flips = policy_flips(
            model,
            videos,
            pool,
            device=device,
            shots=[1, 5],
            episodes=scale.episodes,
            queries=5,
            seed=0,
        )
    return {
        "scale": asdict(scale),
        "val_accuracy": trained.best_val_accuracy,
        "run": f"synthetic D={scale.dim} P={scale.grid**2} d_k={scale.d_k}",
        **flips,
    }


# ---- the heads side by side (issue 3) --------------------------------------------------------


def peak_memory(args: argparse.Namespace, kind: str, extra: dict, precision: Precision) -> int:
    """Bytes one training step needs above the model and the episode's inputs.

    CUDA: the allocator's high-water mark. CPU has no allocator statistics, so the step runs once
    in a fresh process and the growth of that process's peak resident set is the answer.
    """
    device = precision.device
    if device.type != "cuda":
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            return pool.apply(cpu_peak_memory, (args, kind, extra))
    tasks = make_tasks(Dims(), 1, device)
    model = create_model(kind, **model_dims(Dims()), **extra).to(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    eager_step(model, tasks, precision, torch.amp.GradScaler("cuda", enabled=False))
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
    cpu = torch.device("cpu")
    tasks = make_tasks(Dims(), 1, cpu)
    model = create_model(kind, **model_dims(Dims()), **extra)
    before = resident_peak()
    if is_trainable(model):
        eager_step(
            model,
            tasks,
            resolve_precision("float32", cpu),
            torch.amp.GradScaler("cpu", enabled=False),
        )
    else:
        with torch.no_grad():
            model(*tasks[0][:3])
    return resident_peak() - before


def model_dims(dims: Dims) -> dict[str, Any]:
    return {"dim": dims.dim, "frames": dims.frames, "grid": dims.grid}


def models_part(args: argparse.Namespace, device: torch.device, console: Console) -> dict:
    dims = Dims()
    precision = resolve_precision(args.precision, device)
    tasks = make_tasks(dims, 1, device)
    support, labels, query, _ = tasks[0]
    candidates = {
        "SA-CT": ("sact", {"d_k": dims.d_k}),
        "SA-CT, no TMixer": ("sact", {"d_k": dims.d_k, "tmixer": False}),
        "TRX": ("trx", {"d_k": dims.d_k}),
        "Nearest mean": ("nearest-mean", {}),
    }
    rows = []
    for name, (kind, extra) in candidates.items():
        console.print(f"[bold]{name}[/] ...")
        torch.manual_seed(0)
        model = create_model(kind, **model_dims(dims), **extra).to(device)
        trainable = is_trainable(model)
        if trainable:
            row = time_step_mode(
                "eager", model, tasks, precision, repeats=args.repeats,
                matmul_size=args.matmul_size, say=console.print,
            )  # fmt: skip
        else:  # nothing to train: the forward alone, no bound (no matmuls)
            with torch.no_grad():
                model(support, labels, query)
                took = statistics.median(
                    seconds(lambda model=model: model(support, labels, query), device)
                    for _ in range(args.repeats)
                )
            row = {"episode_seconds": took, "ratio": None}
        with torch.no_grad(), precision:
            pool = torch.cat([support, query])
            model.embed(pool)
            embed_time = statistics.median(
                seconds(lambda model=model, pool=pool: model.embed(pool), device)
                for _ in range(args.repeats)
            )
            embedded = model.embed(pool)
            s_emb, q_emb = embedded[: len(support)], embedded[len(support) :]
            match_time = statistics.median(
                seconds(lambda model=model, s=s_emb, e=q_emb: model.match(s, labels, e), device)
                for _ in range(args.repeats)
            )
        rows.append(
            {
                "model": name,
                "config": model.config(),
                "trainable": trainable,
                "forward_flops_per_stage": forward_flops(
                    model, way=WAY, shot=SHOT, queries=len(query)
                ),
                "step_flops": step_flops(model, way=WAY, shot=SHOT, queries=len(query)),
                **row,
                "embed_seconds": embed_time,
                "match_seconds": match_time,
                "peak_memory_bytes": peak_memory(args, kind, extra, precision),
            }
        )
        del model
    return {"dims": asdict(dims), "precision": precision.name, "rows": rows}


def models_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    for column in (
        "model",
        "GFLOP (step)",
        "fwd+bwd s",
        "× bound",
        "embed s",
        "match s",
        "peak MiB",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in result["rows"]:
        table.add_row(
            row["model"] + ("" if row["trainable"] else " (forward only)"),
            f"{row['step_flops'] / 1e9:.1f}",
            f"{row['episode_seconds']:.3f}",
            "—" if row["ratio"] is None else f"{row['ratio']:.2f}",
            f"{row['embed_seconds']:.3f}",
            f"{row['match_seconds']:.4f}",
            f"{row['peak_memory_bytes'] / 2**20:.0f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="policy of the steps and models")
    parser.add_argument(
        "--parts", default="steps,flips", help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller dims: minutes, not tens")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--episodes-per-step", type=int, default=2)
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="probe size (default: 2048 CPU, 8192 CUDA)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    console = Console()
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        console.print(f"[red]error:[/] device {args.device!r} is not usable: {error}")
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    if args.matmul_size is None:
        args.matmul_size = 8192 if device.type == "cuda" else 2048
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    ) or platform.machine()
    where = f"{device.type} ({device_name}), {args.threads} threads"
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "torch": torch.__version__,
        "load_before": os.getloadavg()[0],
    }
    if "steps" in parts:
        results["steps"] = steps_part(args, device, console)
        steps = results["steps"]
        dims = steps["dims"]
        probes = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in steps["matmul_probes"].items())
        console.print(
            steps_table(
                steps,
                f"SA-CT training step, {WAY}-way {SHOT}-shot {WAY * dims['queries']} queries, "
                f"T={dims['frames']} P={dims['grid'] ** 2} D={dims['dim']} d_k={dims['d_k']}: "
                f"{steps['episode_flops'] / 1e9:.0f} GFLOP per episode, "
                f"{steps['episodes_per_step']} per step · precision {steps['precision']} · "
                f"{where} · matmul probes GFLOP/s: {probes} · load {os.getloadavg()[0]:.1f}",
            )
        )
    if "flips" in parts:
        results["flips"] = policy = flips_part(args, device, console)
        console.print(
            flips_table(
                [policy],
                f"SA-CT predictions flipped against float64 ({where}; {policy['run']}, trained "
                f"{policy['scale']['iterations']} steps, val accuracy "
                f"{100 * policy['val_accuracy']:.1f}%) · load {os.getloadavg()[0]:.1f}",
            )
        )
    if "models" in parts:
        results["models"] = models_part(args, device, console)
        console.print(
            models_table(
                results["models"],
                f"heads, one 5-way 5-shot 25-query episode at ResNet-50 dims · precision "
                f"{results['models']['precision']} · {where} · load {os.getloadavg()[0]:.1f}",
            )
        )
    results["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
