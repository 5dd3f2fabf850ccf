"""Training speed at ResNet-50 dims (T=8, P=7x7, D=2048, d_k=1152), and the default settings.

    .venv/bin/python bench/train.py loader    # loader time per episode vs model step time
    .venv/bin/python bench/train.py onthefly  # cached step vs decode + backbone + head step
    .venv/bin/python bench/train.py sweep     # learning rate x tasks per batch, small dims

`loader`: a 5-way 5-shot 5-query episode (50 videos) read from the in-memory cache and streamed
from the store, against one SA-CT training step (forward, backward, AdamW) on it; with streaming,
also the time the step actually waits for the prefetching reader threads.
`onthefly`: the step the cache replaces decodes the episode's videos, runs the frozen backbone
(resnet50, random init: the cost does not depend on the weights) on its frames, then trains the
head; the cached step reads the same episode's features from memory, then trains the head. Both
sides are warmed up first (the backbone's and the head's first calls), then take turns for
``--repeats`` rounds; the table gives each round and the medians.
`sweep`: final and best val accuracy of short runs on a synthetic store, at an equal budget of
episodes, for the defaults in fewshot/training.py.

``--device`` (default cpu) runs the model, the cache and the backbone there; ``--amp`` (default on)
runs the head under the autocast `sact train` picks for that device (bf16 on a GPU with native
bf16, fp16 before Ampere, none on the CPU), ``--no-amp`` in fp32. `sweep` runs `sact train`
itself on ``--device``, with its own autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from sact.common.devices import autocast_for, resolve_device, synchronize
from sact.fewshot import SACT
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import Prefetcher, SplitFeatures, segment_frames
from sact.fewshot.training import TrainConfig, read_metrics, train
from sact.store.backends import open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

FRAMES, GRID, DIM, D_K = 8, (7, 7), 2048, 1152
console = Console()


def resnet50_store(folder: Path, *, classes: int, videos: int) -> tuple[str, Path]:
    parts = {"train": range(classes), "val": range(0), "test": range(0)}
    split = write_split_lists(folder / "split", classes, videos, parts)
    location = write_synthetic_store(
        folder / "feats.zarr",
        classes=classes,
        videos_per_class=videos,
        frames=FRAMES,
        grid=GRID,
        dim=DIM,
        signal_dims=64,
    )
    return location, split


class Precision:
    """Where the bench runs and under which autocast, as `sact train` would (``--device``,
    ``--amp``); float16 also gets `sact train`'s loss scaling."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = resolve_device(args.device)
        self.autocast, self.dtype = autocast_for(self.device) if args.amp else (nullcontext(), None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def describe(self) -> str:
        return f"{self.device}, {'fp32' if self.dtype is None else self.dtype}"


def head_step(
    model: SACT, optimizer, support, support_labels, query, query_labels, *, precision: Precision
) -> None:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast:
        logits = model(support, support_labels, query)
    loss = F.cross_entropy(logits.float(), query_labels)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()


def timed(fn, *args, device: torch.device, **kwargs) -> tuple[float, object]:
    """Wall time of ``fn(*args, **kwargs)`` including the device work it queued."""
    synchronize(device)
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - started, result


# ---- loader ----------------------------------------------------------------------------------


def loader(args: argparse.Namespace) -> dict:
    precision = Precision(args)
    device = precision.device
    with tempfile.TemporaryDirectory() as folder:
        location, split = resnet50_store(Path(folder), classes=args.classes, videos=args.videos)
        feature_set = open_feature_set(location)
        pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "train")
        sampler = EpisodeSampler(pool, way=5, shot=5, queries=5)
        sources = {
            "in memory": SplitFeatures(feature_set, pool, frames=FRAMES, device=device),
            "streaming": SplitFeatures(feature_set, pool, frames=FRAMES, device=device, cache_gb=0),
        }
        rng = np.random.default_rng(0)
        plans = []
        for _ in range(args.loads):
            episode = sampler.sample(rng)
            frames = segment_frames(FRAMES, FRAMES, len(episode.support) + len(episode.query), rng)
            plans.append((episode, frames))

        def load(source: SplitFeatures, plan):
            episode, frames = plan
            split_at = len(episode.support)
            support = source.videos(episode.support, frames[:split_at])
            query = source.videos(episode.query, frames[split_at:])
            labels = torch.from_numpy(episode.support_labels()).to(device)
            return support, labels, query, torch.from_numpy(episode.query_labels()).to(device)

        load_seconds = {}
        for name, source in sources.items():
            load(source, plans[0])  # first read warms the store's metadata caches
            took, _ = timed(lambda s=source: [load(s, p) for p in plans], device=device)
            load_seconds[name] = took / len(plans)

        torch.manual_seed(0)
        model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step_seconds, waits = [], []
        batches = Prefetcher(workers=4, depth=2).map(
            lambda plan: load(sources["streaming"], plan), plans[: args.steps]
        )
        iterator = iter(batches)
        for _ in range(args.steps):
            wait, batch = timed(next, iterator, device=device)
            waits.append(wait)
            step = timed(head_step, model, optimizer, *batch, precision=precision, device=device)
            step_seconds.append(step[0])
    step = float(np.mean(step_seconds))
    # the first wait includes the first read, which nothing could overlap: report the rest
    steady_wait = float(np.mean(waits[1:])) if len(waits) > 1 else waits[0]
    numbers = {
        "episode": "5-way 5-shot 5-query (50 videos, 80 MB at float16)",
        "step_seconds": step,
        "load_seconds": load_seconds,
        "load_over_step": {name: seconds / step for name, seconds in load_seconds.items()},
        "streaming_prefetched_wait_seconds": steady_wait,
        "streaming_prefetched_wait_over_step": steady_wait / step,
        "first_wait_seconds": waits[0],
        "steps": args.steps,
        "loads": args.loads,
        "precision": precision.describe(),
    }
    table = Table(title=f"training loader vs step, {numbers['episode']} ({precision.describe()})")
    for column in ("data", "seconds per episode", "÷ model step"):
        table.add_column(column, justify="left" if column == "data" else "right")
    table.add_row("model step (forward + backward + AdamW)", f"{step:.2f}", "1")
    for name, seconds in load_seconds.items():
        table.add_row(f"loader, {name}", f"{seconds:.4f}", f"{seconds / step:.4f}")
    table.add_row(
        "streaming with prefetch: the step's wait",
        f"{steady_wait:.4f}",
        f"{steady_wait / step:.4f}",
    )
    console.print(table)
    return numbers


# ---- on the fly ------------------------------------------------------------------------------


def onthefly(args: argparse.Namespace) -> dict:
    from sact.demo.synthetic import encode_video
    from sact.extract.backbone import FrozenBackbone, load_backbone
    from sact.extract.decode import sample_clip

    precision = Precision(args)
    device = precision.device
    way, shot, queries = 5, args.shot, args.query
    rng = np.random.default_rng(0)
    loaded = load_backbone("resnet50.tv_in1k", random_init=True)
    backbone = FrozenBackbone(loaded, device=device)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for number in range(way * (shot + queries)):
            frames = rng.integers(0, 255, size=(args.source_frames, 240, 320, 3), dtype=np.uint8)
            paths.append(encode_video(Path(folder) / f"video{number:03d}.mp4", frames))

        def decode_and_embed():
            clips = []
            for path in paths:
                clip = sample_clip(path, FRAMES)
                crops = loaded.preprocessing.resize_and_crop(clip.frames)  # (T, 3, S, S)
                clips.append(backbone(crops))  # (T, P, D) float16
            return torch.from_numpy(np.stack(clips)).to(device)  # (N*(K+Q), T, P, D)

        support_labels = torch.arange(way, device=device).repeat_interleave(shot)
        query_labels = torch.arange(way, device=device).repeat_interleave(queries)
        torch.manual_seed(0)
        model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        split_at = way * shot

        def train_on(videos: torch.Tensor) -> None:
            head_step(
                model, optimizer, videos[:split_at], support_labels, videos[split_at:],
                query_labels, precision=precision,
            )  # fmt: skip

        # warm-up of both sides: the decoder's, the backbone's and the head's first calls (kernel
        # choice, allocations, the optimiser's state) would count against one side only
        cache = decode_and_embed().clone()  # what the store holds for these videos, in memory
        train_on(cache)

        def cached_load() -> torch.Tensor:
            return cache[torch.arange(len(cache), device=device)]

        rounds = []
        for _ in range(args.repeats):  # the sides take turns, so a drifting load weighs on both
            videos_seconds, videos = timed(decode_and_embed, device=device)
            fly_head_seconds, _ = timed(train_on, videos, device=device)
            load_seconds, from_cache = timed(cached_load, device=device)
            cached_head_seconds, _ = timed(train_on, from_cache, device=device)
            on_the_fly = videos_seconds + fly_head_seconds
            cached = load_seconds + cached_head_seconds
            rounds.append(
                {
                    "decode_and_backbone_seconds": videos_seconds,
                    "on_the_fly_head_seconds": fly_head_seconds,
                    "cached_load_seconds": load_seconds,
                    "cached_head_seconds": cached_head_seconds,
                    "on_the_fly_step_seconds": on_the_fly,
                    "cached_step_seconds": cached,
                    "speedup": on_the_fly / cached,
                    "load_average": os.getloadavg()[0],
                }
            )
    median = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
    numbers = {
        "episode": f"{way}-way {shot}-shot {queries}-query ({len(paths)} videos of "
        f"{args.source_frames} frames, 320x240 h264)",
        "rounds": rounds,
        "median": median,
        "precision": precision.describe(),
    }
    table = Table(
        title=f"cached vs on-the-fly training step after a warm-up of both, {numbers['episode']} "
        f"({precision.describe()}), {args.repeats} rounds"
    )
    for column in ("round", "on the fly s (decode + resnet50, head)", "cached s (load, head)"):
        table.add_column(column, justify="left" if column == "round" else "right")
    table.add_column("speedup", justify="right")
    table.add_column("load", justify="right")
    for number, r in [*enumerate(rounds, 1), ("median", median)]:
        table.add_row(
            str(number),
            f"{r['on_the_fly_step_seconds']:.2f} ({r['decode_and_backbone_seconds']:.2f}, "
            f"{r['on_the_fly_head_seconds']:.2f})",
            f"{r['cached_step_seconds']:.2f} ({r['cached_load_seconds']:.4f}, "
            f"{r['cached_head_seconds']:.2f})",
            f"{r['speedup']:.2f}×",
            f"{r['load_average']:.1f}",
        )
    console.print(table)
    return numbers


# ---- sweep -----------------------------------------------------------------------------------


def sweep(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        classes = 96
        parts = {"train": range(64), "val": range(64, 76), "test": range(76, 96)}
        split = write_split_lists(Path(folder) / "split", classes, 10, parts)
        location = write_synthetic_store(
            Path(folder) / "feats.zarr",
            classes=classes,
            videos_per_class=10,
            frames=8,
            grid=(3, 3),
            dim=64,
            signal_dims=8,
        )
        for tasks in (1, 4):
            for lr in (1e-4, 3e-4, 1e-3, 3e-3):
                steps = args.episodes // tasks
                config = TrainConfig(
                    feats=location,
                    split=str(split),
                    d_k=64,
                    lr=lr,
                    tasks_per_batch=tasks,
                    iterations=steps,
                    warmup=steps // 10,
                    val_every=max(1, steps // 5),
                    val_episodes=200,
                    out=str(Path(folder) / f"run-{tasks}-{lr}"),
                    device=args.device,
                )
                started = time.perf_counter()
                result = train(config)
                curve = [
                    r["val_accuracy"]
                    for r in read_metrics(Path(config.out) / "metrics.jsonl")
                    if "val_accuracy" in r
                ]
                rows.append(
                    {
                        "tasks_per_batch": tasks,
                        "lr": lr,
                        "steps": steps,
                        "val_curve": curve,
                        "best": result.best_val_accuracy,
                        "last": result.last_val_accuracy,
                        "seconds": time.perf_counter() - started,
                    }
                )
    table = Table(title=f"AdamW sweep, {args.episodes} training episodes each (synthetic, D=64)")
    for column in ("tasks/batch", "lr", "steps", "val accuracy along the run", "best", "seconds"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["tasks_per_batch"]),
            f"{row['lr']:g}",
            str(row["steps"]),
            " ".join(f"{v:.2f}" for v in row["val_curve"]),
            f"{row['best']:.3f}",
            f"{row['seconds']:.0f}",
        )
    console.print(table)
    return {"episodes": args.episodes, "runs": rows, "defaults": asdict(TrainConfig(feats=""))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("loader", "onthefly", "sweep"))
    parser.add_argument("--classes", type=int, default=10, help="loader: train classes")
    parser.add_argument("--videos", type=int, default=10, help="loader: videos per class")
    parser.add_argument("--loads", type=int, default=10, help="loader: episodes read per source")
    parser.add_argument("--steps", type=int, default=2, help="loader: model steps timed")
    parser.add_argument("--shot", type=int, default=1, help="onthefly: K")
    parser.add_argument("--query", type=int, default=1, help="onthefly: Q per class")
    parser.add_argument("--source-frames", type=int, default=48, help="onthefly: video length")
    parser.add_argument("--repeats", type=int, default=3, help="onthefly: timed rounds")
    parser.add_argument("--episodes", type=int, default=1200, help="sweep: episodes per run")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loader, onthefly: autocast as sact train picks it for the device (none on the CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    numbers = {"loader": loader, "onthefly": onthefly, "sweep": sweep}[args.what](args)
    numbers["torch_threads"] = torch.get_num_threads()
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
