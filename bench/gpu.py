"""The three targets of SSv2-OTAM on one GPU node, measured by one command on synthetic data of
SSv2's shape, each against what bounds it in the same run:

(a) extraction (bench/extraction.py, ``gpu_extraction``): on clips in SSv2's format that weigh
    what SSv2's files weigh, with each decoder installed (PyAV, torchcodec on the CPU and on the
    GPU's NVDEC), videos/s of the decoders alone, of the backbone alone on crops in memory (TF32,
    channels_last) and of `sact extract` end to end; Kinetics-like clips through each decoder;
    the GPU decoder's frames against PyAV's; OTAM's 71,796 videos extrapolated.
(b) training at ResNet-50 dims (T = 8, 7x7, D = 2048, d_k = 1152, 5-way 5-shot 5 queries): the
    tiered loader's episodes/s from each tier (device, host memory, store) against that tier's
    bound (device and host: memory copy rate; store: sequential read rate of its files), the
    model step alone, and the training loop with the tier mix OTAM's train split would get on
    this machine; the step against its FLOP bound (FLOPs counted by torch, the peak from a large
    matmul in the step's dtype); 75,000 episodes extrapolated from the loop.
(c) evaluation: a slice of the test split embedded (extrapolated to OTAM's 2,857 videos) and
    10,000 5-way 5-shot 1-query episodes scored, batched, with the model of (b).

The stores are slices of OTAM's split (its train classes, fewer videos); the rates extrapolate.

    .venv/bin/python bench/gpu.py --json gpu.json                 # one GPU: within 8 minutes
    .venv/bin/python bench/gpu.py --scale tiny --device cpu       # seconds: the test suite runs it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from sact.common.devices import resolve_device, synchronize
from sact.fewshot.accuracy import embed_videos, episode_accuracies
from sact.fewshot.config import TrainConfig
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import CachePlan, Prefetcher, SplitFeatures, plan_cache, segment_frames
from sact.fewshot.training import Trainer, new_model, prepare_data
from sact.testing.stores import write_split_lists, write_synthetic_store

# this script's folder is on the path when it runs: the extraction part lives with its benchmark
from extraction import gpu_extraction, gpu_report_rows  # isort: skip

# SSv2 with the OTAM split (data/splits/ssv2_OTAM) and the targets of issue 11
OTAM_VIDEOS = {"train": 67_013, "val": 1_926, "test": 2_857}
TRAIN_EPISODES, EVAL_EPISODES = 75_000, 10_000
GOALS = {"train_minutes": 10.0, "evaluate_seconds": 5.0}  # extraction's: bench/extraction.py
WAY, SHOT, QUERIES = 5, 5, 5  # training episodes; evaluation: 1 query per class
GiB = 1024**3


@dataclass(frozen=True)
class Scale:
    """How big each part runs. `ssv2`: real shapes, slices of the split; `tiny`: a smoke test."""

    frames: int  # T, stored and used
    grid: int  # features of (b) and (c): grid x grid patches of `dim` channels
    dim: int
    d_k: int
    train_classes: int
    train_videos_per_class: int
    eval_classes: int  # val and test classes each
    eval_videos_per_class: int
    loader_episodes: int  # per tier
    steps: int  # timed training steps (after one warm-up step)
    eval_episodes: int


SCALES = {
    "ssv2": Scale(
        frames=8,
        grid=7,
        dim=2048,
        d_k=1152,
        train_classes=64,
        train_videos_per_class=24,
        eval_classes=24,
        eval_videos_per_class=20,
        loader_episodes=200,
        steps=60,
        eval_episodes=EVAL_EPISODES,
    ),
    # the loader's tiers at the real video size on a CPU: --scale cpu --parts loader
    "cpu": Scale(
        frames=8,
        grid=7,
        dim=2048,
        d_k=1152,
        train_classes=10,
        train_videos_per_class=20,
        eval_classes=5,
        eval_videos_per_class=20,
        loader_episodes=20,
        steps=2,
        eval_episodes=20,
    ),
    "tiny": Scale(
        frames=4,
        grid=2,
        dim=16,
        d_k=16,
        train_classes=6,
        train_videos_per_class=10,
        eval_classes=5,
        eval_videos_per_class=10,
        loader_episodes=4,
        steps=3,
        eval_episodes=40,
    ),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


# ---- (b) training ----------------------------------------------------------------------------


def synthetic_store(scale: Scale, folder: Path) -> tuple[str, Path]:
    """One store with train, val and test classes of the features' shape, and its split lists."""
    classes = scale.train_classes + 2 * scale.eval_classes
    per_class = max(scale.train_videos_per_class, scale.eval_videos_per_class)
    val_start = scale.train_classes
    parts = {
        "train": range(val_start),
        "val": range(val_start, val_start + scale.eval_classes),
        "test": range(val_start + scale.eval_classes, classes),
    }
    split = write_split_lists(folder / "split", classes, per_class, parts)
    location = write_synthetic_store(
        folder / "feats.zarr",
        classes=classes,
        videos_per_class=per_class,
        frames=scale.frames,
        grid=(scale.grid, scale.grid),
        dim=scale.dim,
        signal_dims=min(64, scale.dim),
        shard_size=64,
        relu=True,  # a CNN's features are ReLU outputs: half zeros, as the codec sees them
    )
    return location, split


def copy_rate(source: torch.Tensor, target: torch.Tensor, device: torch.device) -> float:
    """Bytes/s of target.copy_(source), the best of three after a warm-up."""
    target.copy_(source, non_blocking=True)
    seconds = min(timed(lambda: target.copy_(source, non_blocking=True), device) for _ in range(3))
    return source.numel() * source.element_size() / seconds


def memory_bounds(device: torch.device, nbytes: int) -> dict[str, float]:
    """Bytes/s of the copies each memory tier is made of."""
    host = torch.empty(nbytes, dtype=torch.uint8)
    rates = {"host_copy": copy_rate(torch.ones_like(host), host, torch.device("cpu"))}
    if device.type == "cuda":
        on_device = torch.empty(nbytes, dtype=torch.uint8, device=device)
        rates["device_copy"] = copy_rate(torch.ones_like(on_device), on_device, device)
        pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
        rates["host_to_device"] = copy_rate(pinned, on_device, device)
    else:
        rates["device_copy"] = rates["host_copy"]
        rates["host_to_device"] = rates["host_copy"]
    return rates


def sequential_read_rate(folder: Path) -> tuple[float, int]:
    """Bytes/s reading every file under `folder` front to back, and how many bytes that is."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    started = time.perf_counter()
    total = 0
    for path in files:
        with path.open("rb", buffering=0) as handle:
            while chunk := handle.read(8 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - started), total


def episode_plans(pool, scale: Scale, count: int, seed: int) -> list:
    sampler = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=QUERIES)
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(count):
        episode = sampler.sample(rng)
        frames = segment_frames(scale.frames, scale.frames, len(episode.support), rng)
        query_frames = segment_frames(scale.frames, scale.frames, len(episode.query), rng)
        plans.append((episode, frames, query_frames))
    return plans


def loader_rate(features: SplitFeatures, plans: list, readers: int) -> float:
    """Episodes/s of the loader: the device tier read in this thread, the others by `readers`."""

    def load(plan) -> tuple[torch.Tensor, torch.Tensor]:
        episode, support_frames, query_frames = plan
        return (
            features.videos(episode.support, support_frames),
            features.videos(episode.query, query_frames),
        )

    def run() -> None:
        if features.in_memory:
            for plan in plans:
                load(plan)
        else:
            for _ in Prefetcher(workers=readers, depth=2 * readers).map(load, plans):
                pass

    load(plans[0])  # warm-up: store metadata, pinned pool
    return len(plans) / timed(run, features.device)


def forced_plan(plan: CachePlan, *, on_device: int, on_host: int) -> CachePlan:
    return replace(plan, on_device=on_device, on_host=on_host, limits="set by bench/gpu.py")


def peak_flops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    return 2 * size**3 / min(timed(lambda: a @ b, device) for _ in range(3))


@dataclass
class Stage2:
    """The synthetic store of (b) and (c), and a trainer on it."""

    feature_set: Any
    split: Path
    pool: Any  # the train pool
    trainer: Trainer
    base_plan: CachePlan
    config: TrainConfig


def stage2(scale: Scale, device: torch.device, readers: int, folder: Path) -> Stage2:
    location, split = synthetic_store(scale, folder)
    config = TrainConfig(
        feats=location,
        split=str(split),
        way=WAY,
        shot=SHOT,
        query=QUERIES,
        d_k=scale.d_k,
        iterations=1 + scale.steps,
        warmup=1,
        val_episodes=10,
        device=str(device),
        workers=readers,
        prefetch=readers,
        out=str(folder / "run"),
    )
    data = prepare_data(config, None)
    model = new_model(config, data.feature_set, scale.frames)
    trainer = Trainer(config, data, model, folder / "run", scale.frames, None)
    base = plan_cache(
        part="train",
        videos=len(data.train_pool),
        video_bytes=scale.frames * scale.grid**2 * scale.dim * 2,  # float16
        device=device,
        readers=readers,
    )
    return Stage2(data.feature_set, split, data.train_pool, trainer, base, config)


def loader_tiers(scale: Scale, device: torch.device, readers: int, data: Stage2) -> dict:
    """Episodes/s of the loader from each tier alone, against that tier's bound."""
    episode_bytes = WAY * (SHOT + QUERIES) * data.base_plan.video_bytes
    bounds = memory_bounds(device, min(GiB, 64 * episode_bytes))
    read_rate, stored_bytes = sequential_read_rate(Path(data.feature_set.location))
    disk_episode_bytes = stored_bytes / len(data.feature_set) * WAY * (SHOT + QUERIES)
    tier_bounds = {
        "device": bounds["device_copy"] / episode_bytes,
        "host": min(bounds["host_copy"], bounds["host_to_device"]) / episode_bytes,
        "store": read_rate / disk_episode_bytes,
    }
    plans = episode_plans(data.pool, scale, scale.loader_episodes, seed=1)
    everything = len(data.pool)
    tiers = {}
    for tier, (on_device, on_host) in {
        "device": (everything, 0),
        "host": (0, everything),
        "store": (0, 0),
    }.items():
        plan = forced_plan(data.base_plan, on_device=on_device, on_host=on_host)
        features = SplitFeatures(
            data.feature_set, data.pool, frames=scale.frames, device=device, plan=plan
        )
        rate = loader_rate(features, plans, readers)
        tiers[tier] = {
            "episodes_per_second": rate,
            "bound_episodes_per_second": tier_bounds[tier],
            "ratio": rate / tier_bounds[tier],
        }
        del features
    return {
        "train_videos": everything,
        "episode_mib": episode_bytes / 2**20,
        "stored_mib_per_episode": disk_episode_bytes / 2**20,
        "readers": readers,
        "bounds_bytes_per_second": {**bounds, "store_sequential_read": read_rate},
        "tiers": tiers,
    }


def training(scale: Scale, device: torch.device, readers: int, data: Stage2) -> dict:
    """The model step alone against its FLOP bound, and the training loop with the tier mix
    OTAM's whole train split would get on this machine."""
    trainer, base = data.trainer, data.base_plan
    otam = plan_cache(
        part="train",
        videos=OTAM_VIDEOS["train"],
        video_bytes=base.video_bytes,
        device=device,
        readers=readers,
    )
    on_device = round(len(data.pool) * otam.on_device / otam.videos)
    on_host = min(len(data.pool) - on_device, round(len(data.pool) * otam.on_host / otam.videos))
    mixed = forced_plan(base, on_device=on_device, on_host=on_host)
    trainer.__dict__["train_features"] = SplitFeatures(
        data.feature_set, data.pool, frames=scale.frames, device=device, plan=mixed
    )
    batches = trainer.batches()
    tasks, _ = next(batches)
    trainer.train_step(tasks)  # warm-up: kernels, the optimiser's state
    trainer.step += 1
    step_seconds = statistics.median(
        timed(lambda: trainer.train_step(tasks), device) for _ in range(max(3, scale.steps // 4))
    )
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(tasks)
    step_flops = counter.get_total_flops()
    dtype = trainer.amp_dtype or torch.float32
    peak = peak_flops(device, dtype, 8192 if device.type == "cuda" else 1024)

    def loop() -> None:  # loader and step together, the loader reading ahead
        for loaded, _ in batches:
            trainer.train_step(loaded)
            trainer.step += 1

    loop_seconds = timed(loop, device)
    episodes_per_step = data.config.tasks_per_batch
    loop_rate = scale.steps * episodes_per_step / loop_seconds
    step_rate = episodes_per_step / step_seconds
    return {
        "otam_plan": otam.describe(),
        "mixed_plan": mixed.describe(),
        "episodes_per_step": episodes_per_step,
        "step_seconds": step_seconds,
        "step_episodes_per_second": step_rate,
        "step_flops": step_flops,
        "peak_flops_per_second": peak,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "step_over_flop_bound": step_seconds / (step_flops / peak),
        "loop_episodes_per_second": loop_rate,
        "loop_over_step": loop_rate / step_rate,
        "otam_minutes": TRAIN_EPISODES / loop_rate / 60,
    }


# ---- (c) evaluation --------------------------------------------------------------------------


def evaluation(scale: Scale, device: torch.device, readers: int, data: Stage2) -> dict:
    """A test slice embedded once, then `eval_episodes` 5-way 5-shot 1-query episodes scored with
    the trainer's model, as `sact evaluate` does (each video read once from the store)."""
    feature_set, trainer = data.feature_set, data.trainer
    pool = build_pool(feature_set, resolve_split(feature_set, str(data.split)), "test")
    features = SplitFeatures(
        feature_set, pool, frames=scale.frames, device=device, cache_gb=0.0, readers=readers
    )
    episodes = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=1).episodes(
        scale.eval_episodes, seed=0
    )
    model, autocast = trainer.model, trainer.autocast
    positions = np.arange(len(pool))

    def embed():
        return embed_videos(
            model, features, positions, batch_size=64, autocast=autocast, workers=readers
        )

    embed()  # warm-up: kernels for the embedding's shapes
    embed_seconds = timed(embed, device)
    embedding, row_of = embed()
    episode_accuracies(model, embedding, row_of, episodes[:8], autocast=autocast)  # warm-up
    match_seconds = timed(
        lambda: episode_accuracies(model, embedding, row_of, episodes, autocast=autocast), device
    )
    otam_embed = embed_seconds * OTAM_VIDEOS["test"] / len(pool)
    return {
        "test_videos": len(pool),
        "embed_seconds": embed_seconds,
        "episodes": len(episodes),
        "match_seconds": match_seconds,
        "otam_seconds": otam_embed + match_seconds * EVAL_EPISODES / len(episodes),
    }


# ---- the table -------------------------------------------------------------------------------


def report(results: dict, console: Console) -> None:
    table = Table(title=f"issue 11 targets on {results['device_name']} ({results['scale']} scale)")
    for column in ("measure", "value", "bound or reference", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    if "extraction" in results:
        for row in gpu_report_rows(results["extraction"]):
            table.add_row(*row)
    if "loader" in results:
        b = results["loader"]
        bounds = {
            "device": "device copy",
            "host": "min(host copy, to device)",
            "store": "file read",
        }
        for tier, numbers in b["tiers"].items():
            table.add_row(
                f"(b) loader, {tier} tier, episodes/s",
                f"{numbers['episodes_per_second']:.2f}",
                f"{numbers['bound_episodes_per_second']:.2f} ({bounds[tier]})",
                f"{numbers['ratio']:.2f}",
            )
    if "training" in results:
        b = results["training"]
        peak = b["peak_flops_per_second"] / 1e12  # TFLOP/s
        table.add_row(
            f"(b) model step alone ({b['compute_dtype']}), episodes/s",
            f"{b['step_episodes_per_second']:.2f}",
            f"FLOP bound at {peak:.3g} TFLOP/s",
            f"{b['step_over_flop_bound']:.2f} × bound",
        )
        table.add_row(
            "(b) training loop, OTAM's tier mix, episodes/s",
            f"{b['loop_episodes_per_second']:.2f}",
            "model step alone",
            f"{b['loop_over_step']:.2f}",
        )
        table.add_row(
            "(b) 75,000 episodes",
            f"{b['otam_minutes']:.1f} min",
            f"goal {GOALS['train_minutes']:.0f} min",
        )
    if "evaluation" in results:
        c = results["evaluation"]
        table.add_row(f"(c) embed {c['test_videos']} test videos", f"{c['embed_seconds']:.2f} s")
        table.add_row(f"(c) score {c['episodes']} episodes", f"{c['match_seconds']:.2f} s")
        table.add_row(
            "(c) SSv2-OTAM: 2,857 videos + 10,000 episodes",
            f"{c['otam_seconds']:.2f} s",
            f"goal {GOALS['evaluate_seconds']:.0f} s",
        )
    console.print(table)
    if "training" in results:
        console.print(f"OTAM's train split here: {results['training']['otam_plan']}")


PARTS = ("extraction", "loader", "training", "evaluation")
TARGET_OF = {"extraction": "a", "loader": "b", "training": "b", "evaluation": "c"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ssv2")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--readers", type=int, default=None, help="loader threads (default: cores)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for videos and stores")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    console = Console()
    scale = SCALES[args.scale]
    device = resolve_device(args.device)
    cores = len(os.sched_getaffinity(0))
    readers = cores if args.readers is None else args.readers
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "scale": args.scale,
        "scale_settings": asdict(scale),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "cores": cores,
        "torch": torch.__version__,
        "load_average_before": os.getloadavg()[0],
    }

    def measured(part: str, measure: Callable[[], dict]) -> None:
        """One part's numbers, or its error: a GPU slot is too scarce to lose the other parts to
        one failure. The JSON is rewritten after each part, so a run cut short keeps what it has."""
        console.print(f"({TARGET_OF[part]}) {part} ...")
        try:
            results[part] = measure()
        except Exception as error:  # reported; the exit status says so
            console.print_exception()
            results.setdefault("errors", {})[part] = f"{type(error).__name__}: {error}"
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        if "extraction" in parts:
            measured(
                "extraction",
                lambda: gpu_extraction(args.scale, device, Path(scratch) / "a", say=console.print),
            )
        stage2_parts = [part for part in ("loader", "training", "evaluation") if part in parts]
        if stage2_parts:
            console.print("(b) writing the synthetic store ...")
            data = stage2(scale, device, readers, Path(scratch) / "b")
            measures = {"loader": loader_tiers, "training": training, "evaluation": evaluation}
            for part in stage2_parts:
                measured(part, lambda part=part: measures[part](scale, device, readers, data))
    results["seconds"] = time.perf_counter() - started
    results["load_average_after"] = os.getloadavg()[0]
    report(results, console)
    console.print(
        f"{results['seconds']:.0f} s in all; load average {results['load_average_after']:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    for part, error in results.get("errors", {}).items():
        console.print(f"{part} failed: {error}")
    sys.exit(1 if results.get("errors") else 0)


if __name__ == "__main__":
    main()
