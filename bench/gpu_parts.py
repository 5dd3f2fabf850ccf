"""bench/gpu.py's parts, each timed, the JSON rewritten after each (what each measures and the
command: bench/gpu.py). Imported once bench/gpu_options.py has checked the options."""

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
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sact.common.devices import bf16_is_native, resolve_device, synchronize
from sact.common.options import checked
from sact.fewshot.accuracy import embed_videos, episode_logits
from sact.fewshot.config import STEPS, EvalConfig, TrainConfig
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import CachePlan, Prefetcher, SplitFeatures, plan_cache, segment_frames
from sact.fewshot.flops import matmul_rate, sact_flops, step_bound_seconds, step_flops
from sact.fewshot.precision import CUDA_AUTO, POLICIES, resolve_precision
from sact.fewshot.step import make_step
from sact.fewshot.sweep_config import SweepConfig, read_recipe
from sact.fewshot.training import Trainer, new_model, prepare_data
from sact.testing.stores import write_split_lists, write_synthetic_store

from gpu_options import PART_SECONDS, wanted_parts  # isort: skip

# this script's folder is on the path when it runs: parts that live with their own benchmarks
from evaluate import measure as measure_evaluation  # isort: skip
from extraction import gpu_extraction, gpu_report_rows  # isort: skip
from sweep import measure as measure_sweep  # isort: skip

# SSv2 with the OTAM split (data/splits/ssv2_OTAM) and the targets of issues 11 and 20
OTAM_VIDEOS = {"train": 67_013, "val": 1_926, "test": 2_857}
TRAIN_EPISODES, EVAL_EPISODES = 75_000, 10_000
GOALS = {
    "train_minutes": 10.0,
    "evaluate_seconds": 5.0,
    "match_seconds": 1.0,
    "step_over_bf16_bound": 2.0,
    "flip_rate": 0.005,
}  # extraction's: bench/extraction.py
WAY, SHOT, QUERIES = 5, 5, 5  # training episodes; evaluation: 1 query per class
PEAK_LABELS = ("bfloat16", "float16", "tf32", "float32")  # fewshot/flops.py's precision labels
FLIP_EPISODES = 1_000
SWEEP_EPISODES = 1_000  # test episodes per shot of the sweep part's runs
SWEEP_SEEDS = 2  # of the recipe's 3: the fewest that train side by side
GiB = 1024**3


@dataclass(frozen=True)
class Scale:
    """How big each part runs. `ssv2`: real shapes, slices of the split; `tiny`: a smoke test."""

    frames: int  # T, stored and used
    grid: int  # features of the stage-2 parts: grid x grid patches of `dim` channels
    dim: int
    d_k: int
    train_classes: int
    train_videos_per_class: int
    eval_classes: int  # val and test classes each
    eval_videos_per_class: int
    loader_episodes: int  # per tier
    steps: int  # timed training steps (after one warm-up step)
    sweep_variants: int  # how many of ssv2-otam's variants the sweep part runs, the rest estimated
    eval_episodes: int
    matmul_size: int  # n of the n³ products of `peaks`


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
        sweep_variants=5,
        eval_episodes=EVAL_EPISODES,
        matmul_size=8192,
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
        sweep_variants=5,
        eval_episodes=20,
        matmul_size=1024,
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
        sweep_variants=1,  # SA-CT: its seeds stack, and the test suite's time is short
        eval_episodes=40,
        matmul_size=256,
    ),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def policies(device: torch.device) -> list[str]:
    """The precision policies (fewshot/precision.py) that compute differently on `device`, IEEE
    float32 first (the reference of `flips`): on CUDA each policy of the card's half dtype; on the
    CPU, which has no TF32, those without TF32."""
    if device.type != "cuda":
        return [
            name for name, policy in POLICIES.items() if not policy.tf32 and name != "fp16-keys"
        ]
    half = torch.bfloat16 if bf16_is_native(device) else torch.float16
    return [name for name, policy in POLICIES.items() if policy.keys in (torch.float32, half)]


def step_modes(device: torch.device) -> list[str]:
    """The step modes (fewshot/step.py) `steps` times: on the CPU the two that need no compiler
    (compiling there takes minutes), on CUDA every one."""
    modes = [mode for mode in STEPS if mode != "auto"]
    return modes if device.type == "cuda" else ["eager", "batched"]


# ---- the synthetic store and a trainer on it ---------------------------------------------------


def synthetic_store(scale: Scale, folder: Path) -> tuple[str, Path]:
    """One store with train, val and test classes of the features' shape, and its split lists;
    the videos in a random order, so each split's are spread over the shards as in OTAM's."""
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
        shuffled=True,
    )
    return location, split


@dataclass
class Stage2:
    """The synthetic store of the stage-2 parts, and a trainer on it."""

    feature_set: Any
    split: Path
    pool: Any  # the train pool
    trainer: Trainer
    base_plan: CachePlan
    config: TrainConfig


def stage2(
    scale: Scale, device: torch.device, readers: int, folder: Path, **changes: Any
) -> Stage2:
    """A trainer of `sact train`'s defaults (and `changes`) on the store in `folder`, written
    there unless it is."""
    if not (folder / "feats.zarr").exists():
        synthetic_store(scale, folder)
    config = TrainConfig(
        feats=str(folder / "feats.zarr"),
        split=str(folder / "split"),
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
        **changes,
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
    return Stage2(data.feature_set, folder / "split", data.train_pool, trainer, base, config)


@dataclass
class Bench:
    """What the parts share: the settings, the results so far, the stage-2 store and trainer."""

    scale: Scale
    scale_name: str
    device: torch.device
    readers: int
    scratch: Path
    console: Console
    results: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def data(self) -> Stage2:
        self.console.print("writing the synthetic store ...")
        return stage2(self.scale, self.device, self.readers, self.scratch / "stage2")

    def peak(self, precision: str) -> float:
        """FLOP/s of `peaks` at one of PEAK_LABELS (measured now if not yet)."""
        if "peaks" not in self.results:
            self.results["peaks"] = peaks(self)
        return float(self.results["peaks"][precision])


# ---- peaks -------------------------------------------------------------------------------------


def peaks(bench: Bench) -> dict[str, Any]:
    """fewshot/flops.py's dense matmul rates, by the precision labels its bounds use."""
    size, device = bench.scale.matmul_size, bench.device
    rates = {label: matmul_rate(device, label, size=size) for label in PEAK_LABELS}
    note = None if device.type == "cuda" else "no TF32 on a CPU: the tf32 probe is float32"
    return {"size": size, **rates, "note": note}


# ---- extraction ----------------------------------------------------------------------------------


def extraction(bench: Bench) -> dict:
    return gpu_extraction(
        bench.scale_name, bench.device, bench.scratch / "extraction", say=bench.console.print
    )


# ---- loader ------------------------------------------------------------------------------------


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


def loader_tiers(bench: Bench) -> dict:
    """Episodes/s of the loader from each tier alone, against that tier's bound."""
    data, scale, device, readers = bench.data, bench.scale, bench.device, bench.readers
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


# ---- steps and training ------------------------------------------------------------------------


def use(trainer: Trainer, policy_name: str, mode: str, say: Callable[[str], object]) -> None:
    """Switch the trainer to another precision policy and step mode, as `sact train
    --precision --step` would have built it."""
    trainer.precision = resolve_precision(policy_name, trainer.device)
    trainer.autocast, trainer.amp_dtype = trainer.precision, trainer.precision.autocast_dtype
    trainer.scaler = torch.amp.GradScaler(
        trainer.device.type, enabled=trainer.amp_dtype == torch.float16
    )
    trainer.step_mode, trainer.run_step = mode, make_step(mode, trainer.device, say=say)


def time_steps(trainer: Trainer, tasks: list, count: int, device: torch.device) -> float:
    """Median seconds of `count` optimiser steps on the same episodes, after one warm-up."""
    trainer.train_step(tasks)  # warm-up: kernels, the optimiser's state, compiling
    return statistics.median(timed(lambda: trainer.train_step(tasks), device) for _ in range(count))


def steps(bench: Bench) -> dict:
    """The step in each step mode and precision policy against fewshot/flops.py's bound at the
    policy's precisions and at bfloat16's (the card's floor): every policy eager and
    batched, then the compiled modes with `--precision auto`'s CUDA choice first. Rows stop
    starting once the part's seconds (`Part.seconds`) are spent; the rest are listed."""
    scale, device, data = bench.scale, bench.device, bench.data
    trainer = data.trainer
    episode = {"way": WAY, "shot": SHOT, "queries": WAY * QUERIES}
    episodes = data.config.tasks_per_batch
    total = step_flops(trainer.model, **episode) * episodes
    rates = {label: bench.peak(label) for label in PEAK_LABELS}
    bf16_bound = total / rates["bfloat16"]
    names = policies(device)
    plan = [(mode, name) for mode in step_modes(device) for name in names]
    compiled = [mode not in ("eager", "batched") for mode, _ in plan]

    def rank(row: int) -> tuple[bool, bool]:  # uncompiled first, then auto's policy compiled
        return compiled[row], compiled[row] and plan[row][1] != CUDA_AUTO

    plan = [plan[row] for row in sorted(range(len(plan)), key=rank)]
    stop_at = time.perf_counter() + PART_SECONDS["steps"][bench.scale_name]
    tasks, _ = next(trainer.batches())
    rows, not_run = [], []
    for mode, name in plan:
        if time.perf_counter() > stop_at:
            not_run.append(f"{mode}, {name}")
            continue
        use(trainer, name, mode, bench.console.print)
        started = time.perf_counter()
        seconds = time_steps(trainer, tasks, max(3, scale.steps // 4), device)
        rows.append(
            {
                "step_mode": mode,
                "precision": name,
                "step_seconds": seconds,
                "episodes_per_second": data.config.tasks_per_batch / seconds,
                "over_own_bound": seconds
                / (
                    episodes
                    * step_bound_seconds(trainer.model, trainer.precision, rates, **episode)
                ),
                "over_bf16_bound": seconds / bf16_bound,
                "compile_seconds": getattr(trainer.run_step, "compile_seconds", None),
                "fell_back_to_eager": getattr(trainer.run_step, "fell_back", False),
                "row_seconds": time.perf_counter() - started,
            }
        )
    use(trainer, data.config.precision, data.config.step, bench.console.print)
    return {
        "episodes_per_step": data.config.tasks_per_batch,
        "step_gflop": total / 1e9,
        "rows": rows,
        "not_run": not_run,
    }


def training(bench: Bench) -> dict:
    """The training loop with the tier mix OTAM's whole train split would get on this machine,
    against the step alone; 75,000 episodes projected from both."""
    data, scale, device = bench.data, bench.scale, bench.device
    trainer, base = data.trainer, data.base_plan
    otam = plan_cache(
        part="train",
        videos=OTAM_VIDEOS["train"],
        video_bytes=base.video_bytes,
        device=device,
        readers=bench.readers,
    )
    on_device = round(len(data.pool) * otam.on_device / otam.videos)
    on_host = min(len(data.pool) - on_device, round(len(data.pool) * otam.on_host / otam.videos))
    mixed = forced_plan(base, on_device=on_device, on_host=on_host)
    trainer.__dict__["train_features"] = SplitFeatures(
        data.feature_set, data.pool, frames=scale.frames, device=device, plan=mixed
    )
    trainer.step = 0
    batches = trainer.batches()
    tasks, _ = next(batches)
    step_seconds = time_steps(trainer, tasks, max(3, scale.steps // 4), device)

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
        "loop_episodes_per_second": loop_rate,
        "loop_over_step": loop_rate / step_rate,
        "otam_minutes_from_steps": TRAIN_EPISODES / step_rate / 60,
        "otam_minutes": TRAIN_EPISODES / loop_rate / 60,
    }


# ---- flips and evaluation ----------------------------------------------------------------------


def flips(bench: Bench) -> dict:
    """The share of test predictions of the trained run that each precision flips against IEEE
    float32: the test split embedded once per precision, the same episodes matched."""
    data, device = bench.data, bench.device
    feature_set, model = data.feature_set, data.trainer.model
    pool = build_pool(feature_set, resolve_split(feature_set, str(data.split)), "test")
    features = SplitFeatures(
        feature_set, pool, frames=bench.scale.frames, device=device, readers=bench.readers
    )
    episodes = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=1).episodes(FLIP_EPISODES, seed=0)
    positions = np.arange(len(pool))

    def predictions(policy_name: str) -> torch.Tensor:
        precision = resolve_precision(policy_name, device)
        embedding, row_of = embed_videos(
            model, features, positions, batch_size=64, autocast=precision, workers=bench.readers
        )
        logits = episode_logits(model, embedding, row_of, episodes, autocast=precision)
        return torch.cat([episode.argmax(dim=-1) for episode in logits])

    reference, *others = policies(device)
    exact = predictions(reference)
    return {
        "reference": reference,
        "episodes": len(episodes),
        "predictions": len(exact),
        "flip_rate": {name: float((predictions(name) != exact).float().mean()) for name in others},
    }


def evaluation(bench: Bench) -> dict:
    """bench/evaluate.py's read / embed / match of the test split, both paths, with the trained
    model and `sact evaluate`'s defaults (precision, batch, reader threads), the reads also by
    one thread and by one per core; OTAM's test split by the share the slice holds."""
    data, device = bench.data, bench.device
    feature_set = data.feature_set
    pool = build_pool(feature_set, resolve_split(feature_set, str(data.split)), "test")
    settings = EvalConfig()  # what `sact evaluate` reads and embeds with by default
    numbers = measure_evaluation(
        data.trainer.model, feature_set, pool, frames=bench.scale.frames, device=device,
        autocast=resolve_precision(settings.precision, device), batch_size=settings.batch_size,
        workers=settings.workers, episodes=bench.scale.eval_episodes,
        more_workers=bench.readers, say=bench.console.print,
    )  # fmt: skip
    numbers.pop("embeddings")
    numbers["share_of_otam_test"] = len(pool) / OTAM_VIDEOS["test"]
    # `match` computes in IEEE float32 under every policy: its FLOPs over that peak bound it
    stages = sact_flops(
        n=WAY, k=SHOT, q=WAY, t=bench.scale.frames, p=bench.scale.grid**2, d=bench.scale.dim,
        d_k=bench.scale.d_k, tmixer=True,
    )  # fmt: skip
    match_flops = (stages["scores"] + stages["prototypes"]) * EVAL_EPISODES
    numbers["otam_match_gflop"] = match_flops / 1e9
    numbers["otam_match_bound_seconds"] = match_flops / bench.peak("float32")
    return numbers


def sweep(bench: Bench) -> dict:
    """bench/sweep.py's (a) one by one, (b) `sact sweep` and (c) side by side on the stage-2
    store: a stated fraction of SSv2-OTAM's comparison (`scale.sweep_variants` of its variants,
    two seeds of three, the fewest (c) stacks; `scale.steps` steps, 1,000 test episodes per
    shot), extrapolated to the whole of it."""
    data, scale = bench.data, bench.scale
    recipe = read_recipe("ssv2-otam").sweep
    base = SweepConfig()
    config = replace(
        base, feats=data.feature_set.location, split=str(data.split),
        variants=tuple(recipe["variants"][: scale.sweep_variants]), seeds=SWEEP_SEEDS,
        steps=scale.steps,
        episodes=min(scale.eval_episodes, SWEEP_EPISODES), device=str(bench.device),
        # eager: a compiled step's compile time is paid once per run, over 18,750 steps, not 60
        training=replace(base.training, d_k=scale.d_k, val_every=scale.steps, val_episodes=50,
                         warmup=1, step="eager", workers=bench.readers),
    )  # fmt: skip
    checked(config)
    return measure_sweep(config, bench.scratch / "sweep", otam=True, console=bench.console)


# ---- the parts, the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    measure: Callable[[Bench], dict]

    @property
    def seconds(self) -> dict[str, float]:
        return PART_SECONDS[self.name]


PARTS = (
    Part("peaks", peaks),
    Part("extraction", extraction),
    Part("loader", loader_tiers),
    Part("steps", steps),
    Part("training", training),
    Part("flips", flips),
    Part("evaluation", evaluation),
    Part("sweep", sweep),
)


def report(results: dict, console: Console) -> None:
    table = Table(title=f"SSv2-OTAM targets on {results['device_name']} ({results['scale']} scale)")
    for column in ("measure", "value", "bound or reference", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    if "peaks" in results:
        p = results["peaks"]
        table.add_row(
            f"matmul {p['size']}³: {' / '.join(PEAK_LABELS)}",
            " / ".join(f"{p[label] / 1e12:.3g}" for label in PEAK_LABELS) + " TFLOP/s",
        )
    if "extraction" in results:
        for row in gpu_report_rows(results["extraction"]):
            table.add_row(*row)
    if "loader" in results:
        bounds = {
            "device": "device copy",
            "host": "min(host copy, to device)",
            "store": "file read",
        }
        for tier, numbers in results["loader"]["tiers"].items():
            table.add_row(
                f"loader, {tier} tier, episodes/s",
                f"{numbers['episodes_per_second']:.2f}",
                f"{numbers['bound_episodes_per_second']:.2f} ({bounds[tier]})",
                f"{numbers['ratio']:.2f}",
            )
    if "steps" in results:
        s = results["steps"]
        for row in s["rows"]:
            compiled = row["compile_seconds"]
            table.add_row(
                f"step, {row['step_mode']}, {row['precision']}, episodes/s",
                f"{row['episodes_per_second']:.2f}"
                + (f" (compiled in {compiled:.0f} s)" if compiled is not None else "")
                + (" (fell back to eager)" if row["fell_back_to_eager"] else ""),
                f"{row['over_own_bound']:.2f} × own bound",
                f"{row['over_bf16_bound']:.2f} × bf16 bound "
                f"(goal ≤ {GOALS['step_over_bf16_bound']:g})",
            )
    if "training" in results:
        t = results["training"]
        table.add_row(
            "training loop, OTAM's tier mix, episodes/s",
            f"{t['loop_episodes_per_second']:.2f}",
            "the step alone",
            f"{t['loop_over_step']:.2f}",
        )
        table.add_row(
            "75,000 episodes (loop; steps alone)",
            f"{t['otam_minutes']:.1f} min; {t['otam_minutes_from_steps']:.1f} min",
            f"goal {GOALS['train_minutes']:.0f} min",
        )
    if "flips" in results:
        for name, rate in results["flips"]["flip_rate"].items():
            table.add_row(
                f"flips against float32, {name}",
                f"{100 * rate:.2f}%",
                f"goal ≤ {100 * GOALS['flip_rate']:.1f}%",
            )
    if "evaluation" in results:
        e = results["evaluation"]
        for path, p in e["paths"].items():
            table.add_row(
                f"evaluation {path}: read / embed / both, {e['test_videos']} videos; match "
                f"{e['episodes']} episodes",
                f"{p['read_seconds']:.2f} / {p['embed_in_memory_seconds']:.2f} / "
                f"{p['read_and_embed_seconds']:.2f} s; {p['match_seconds']:.2f} s",
                f"bound: {p['bound']}",
            )
            if path == "now":
                scaling = e["read_scaling"]
                table.add_row(
                    f"evaluation reads: {scaling['workers']} threads "
                    f"({scaling['more_workers']}) over one",
                    f"{scaling['speedup_of_workers']:.2f}× "
                    f"({scaling['speedup_of_more_workers']:.2f}×)",
                    f"one thread {scaling['one_thread_seconds']:.2f} s",
                )
            table.add_row(
                f"evaluation {path}: SSv2-OTAM, 2,857 videos + 10,000 episodes",
                f"{p['otam_seconds']:.2f} s (match {p['otam_match_seconds']:.2f} s)",
                f"goal {GOALS['evaluate_seconds']:.0f} s (match {GOALS['match_seconds']:.0f} s)",
                f"match bound {e['otam_match_bound_seconds']:.2f} s (float32 peak)",
            )
    if "sweep" in results:
        w, otam = results["sweep"], results["sweep"]["otam"]
        table.add_row(
            f"sact sweep vs the same {w['runs']} runs one by one, s",
            f"{w['sweep']['seconds']:.0f} vs {w['one_by_one']['seconds']:.0f}",
            "bitwise" if w["bitwise_same_runs"] else "runs differ",
            f"{w['ratio']:.2f}",
        )
        closeness = w["side_by_side_closeness"]
        table.add_row(
            f"sact sweep one after another vs side by side, same {w['runs']} runs, s",
            f"{w['sweep']['seconds']:.0f} vs {w['side_by_side']['seconds']:.0f}",
            f"weights ≤ {closeness['largest_weight_difference']:.1e}"
            + ("" if closeness["same_test_accuracies"] else ", test accuracies differ"),
            f"{w['side_by_side_ratio']:.2f}",
        )
        timed, variants = len(otam["variants_timed"]), otam["variants"]
        source = "" if timed == variants else f" from {timed} of {variants} variants"
        table.add_row(
            f"SSv2-OTAM comparison, {otam['runs']} runs (train; evaluate), extrapolated{source}",
            f"{otam['minutes']:.0f} min ({otam['train_minutes']:.0f}; "
            f"{otam['evaluate_minutes']:.0f})",
            f"goal {otam['goal_minutes']:.0f} min",
        )
        table.add_row(
            f"SSv2-OTAM comparison, {otam['runs']} runs side by side, extrapolated{source}",
            f"{otam['side_by_side_minutes']:.0f} min",
            f"goal {otam['goal_minutes']:.0f} min",
        )
    console.print(table)
    if results.get("steps", {}).get("not_run"):
        console.print(f"steps not timed (the part's time ran out): {results['steps']['not_run']}")
    for part, note in results.get("skipped", {}).items():
        console.print(f"{part} skipped: {note}")
    if "training" in results:
        console.print(f"OTAM's train split here: {results['training']['otam_plan']}")


def run(args: argparse.Namespace) -> None:
    """The parts `args` (bench/gpu_options.py's, checked) want, in order, then the table."""
    wanted = wanted_parts(args.parts)
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
        "budget_seconds": args.budget_s,
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

    def write() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")

    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        bench = Bench(scale, args.scale, device, readers, Path(scratch), console, results)
        for part in PARTS:
            if part.name not in wanted:
                continue
            elapsed = time.perf_counter() - started
            needs = part.seconds[args.scale]
            if elapsed + needs > args.budget_s:
                note = (
                    f"needs about {needs:.0f} s, {args.budget_s - elapsed:.0f} s of the budget left"
                )
                results.setdefault("skipped", {})[part.name] = note
                console.print(f"{part.name} skipped: {note}")
                write()
                continue
            console.print(f"{part.name} ...")
            part_started = time.perf_counter()
            try:  # a GPU slot is too scarce to lose the other parts to one failure
                results[part.name] = part.measure(bench)
            except Exception as error:  # reported; the exit status says so
                console.print_exception()
                results.setdefault("errors", {})[part.name] = f"{type(error).__name__}: {error}"
            results.setdefault("part_seconds", {})[part.name] = time.perf_counter() - part_started
            write()
    results["seconds"] = time.perf_counter() - started
    results["load_average_after"] = os.getloadavg()[0]
    report(results, console)
    console.print(
        f"{results['seconds']:.0f} s in all; load average {results['load_average_after']:.1f}"
    )
    write()
    for part, error in results.get("errors", {}).items():
        console.print(f"{part} failed: {error}")
    sys.exit(1 if results.get("errors") else 0)
