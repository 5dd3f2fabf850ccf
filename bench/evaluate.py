"""Evaluation speed, split into read / embed / match: today's path against the one before it, on a
store whose order is not the split's (as SSv2's), at ResNet-50 dims (T=8, P=7x7, D=2048,
d_k=1152), 5-way 5-shot 1-query episodes; and a full `forward` per episode for reference.

    .venv/bin/python bench/evaluate.py [--episodes 200] [--test-classes 10] [--videos 10]
    .venv/bin/python bench/evaluate.py --device cuda [--precision float32]

Both embedding paths read every test video once from the store (`sact evaluate` keeps nothing in
memory: each video is read to be embedded), `--workers` threads reading ahead while the model
embeds, and score the episodes with `match` batched over many episodes per call:

- before (main before 10e1c02): batches in the pool's order (class by class), so on a store
  written in another order each batch's videos lie in as many shards, one store read each;
- now (fewshot/accuracy.py, `embed_videos`): batches in store order, each batch's videos runs of
  consecutive rows read front to back, a batch holding every stored frame handed to the device
  without a copy.

Each path's parts are also timed alone: the reads alone (no model), the embedding alone (the
videos already in memory), the match alone. The projection to SSv2-OTAM's test split (2,857
videos, 10,000 episodes) scales the end-to-end embedding by videos and the match by episodes, and
names which of read and embed bounds the embedding. The store holds `--other-classes` classes
besides the test split's, shuffled together, so the test videos are spread over the shards as in
an OTAM store. `bench/gpu.py`'s evaluation part calls `measure` on an SSv2-sized store.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sact.common.devices import resolve_device, synchronize
from sact.fewshot import SACT
from sact.fewshot.accuracy import (
    concat_embeddings,
    embed_videos,
    episode_accuracies,
    episode_logits,
)
from sact.fewshot.config import PRECISIONS, EvalConfig
from sact.fewshot.episodes import EpisodeSampler, VideoPool, build_pool, resolve_split
from sact.fewshot.features import Prefetcher, SplitFeatures, segment_frames
from sact.fewshot.heads import FewShotHead, VideoEmbedding
from sact.fewshot.precision import resolve_precision
from sact.store.backends import FeatureSet, open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

FRAMES, GRID, DIM, D_K = 8, (7, 7), 2048, 1152
WAY, SHOT, QUERIES = 5, 5, 1  # the protocol's 5-way 5-shot, 1 query per class
OTAM_TEST_VIDEOS, OTAM_EPISODES = 2_857, 10_000


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any, float]:
    """Seconds of `fn()` with the device work it queued, its result, the load average after."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result, os.getloadavg()[0]


def embed_in_pool_order(
    model: FewShotHead,
    features: SplitFeatures,
    positions: np.ndarray,
    *,
    batch_size: int,
    autocast: AbstractContextManager,
    workers: int,
) -> tuple[VideoEmbedding, np.ndarray]:
    """`embed_videos` as it was before 10e1c02 (the reference here): batches in pool order."""
    stored = features.feature_set.frames
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]

    def load(batch: np.ndarray) -> torch.Tensor:
        return features.videos(batch, segment_frames(stored, features.frames, len(batch)))

    parts = []
    with torch.no_grad():
        for videos in Prefetcher(workers=workers, depth=2 * workers).map(load, batches):
            with autocast:
                parts.append(model.embed(videos))
    row_of = np.full(len(features.pool), -1, dtype=np.int64)
    row_of[positions] = np.arange(len(positions))
    return concat_embeddings(parts), row_of


def read_only(features: SplitFeatures, batches: list[np.ndarray], workers: int) -> list:
    """Every batch read as the embedding reads it, without the model."""

    def load(batch: np.ndarray) -> torch.Tensor:
        stored = features.feature_set.frames
        return features.videos(batch, segment_frames(stored, features.frames, len(batch)))

    return list(Prefetcher(workers=workers, depth=2 * workers).map(load, batches))


def measure(
    model: FewShotHead,
    feature_set: FeatureSet,
    pool: VideoPool,
    *,
    frames: int,
    device: torch.device,
    autocast: AbstractContextManager,
    batch_size: int,
    workers: int,
    episodes: int,
    more_workers: int | None = None,
    say: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Read / embed / match seconds of both paths on every video of `pool` and `episodes`
    5-way 5-shot 1-query episodes, with the load average after each; OTAM projected."""
    model.eval()
    features = SplitFeatures(
        feature_set, pool, frames=frames, device=device, cache_gb=0.0, readers=workers
    )
    positions = np.arange(len(pool))
    in_store_order = positions[np.argsort(features.rank, kind="stable")]
    orders = {"before": positions, "now": in_store_order}
    drawn = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=QUERIES).episodes(episodes, seed=0)

    def batches_of(order: np.ndarray) -> list[np.ndarray]:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def store_reads(order: np.ndarray) -> int:
        """Reads the store gets: one per run of consecutive rows in a batch (gather_rows)."""
        runs = 0
        for batch in batches_of(order):
            rows = np.sort(pool.store_indices[batch])
            runs += int((np.diff(rows, prepend=-2) != 1).sum())
        return runs

    with torch.no_grad(), autocast:  # warm-up: the embedding's kernels, the store's metadata
        model.embed(read_only(features, batches_of(positions[:batch_size]), 1)[0])
    numbers: dict[str, Any] = {"test_videos": len(pool), "episodes": len(drawn), "paths": {}}
    for path, order in orders.items():
        say(f"evaluation, {path}: reading, embedding, matching ...")
        read_seconds, loaded, read_load = timed(
            lambda order=order: read_only(features, batches_of(order), workers), device
        )

        def embed_in_memory(loaded: list = loaded) -> None:
            with torch.no_grad(), autocast:
                for videos in loaded:
                    model.embed(videos)

        embed_seconds, _, embed_load = timed(embed_in_memory, device)
        del loaded
        if path == "before":
            embedded = lambda: embed_in_pool_order(  # noqa: E731
                model, features, positions, batch_size=batch_size, autocast=autocast,
                workers=workers,
            )  # fmt: skip
        else:
            embedded = lambda: embed_videos(  # noqa: E731
                model, features, positions, batch_size=batch_size, autocast=autocast,
                workers=workers,
            )  # fmt: skip
        end_to_end, (embedding, row_of), end_load = timed(embedded, device)
        match_seconds, accuracies, match_load = timed(
            lambda e=embedding, r=row_of: episode_accuracies(model, e, r, drawn, autocast=autocast),
            device,
        )
        per_video = end_to_end / len(pool)
        per_episode = match_seconds / len(drawn)
        numbers["paths"][path] = {
            "store_reads": store_reads(order),
            "read_seconds": read_seconds,
            "read_load": read_load,
            "embed_in_memory_seconds": embed_seconds,
            "embed_load": embed_load,
            "read_and_embed_seconds": end_to_end,
            "read_and_embed_load": end_load,
            "match_seconds": match_seconds,
            "match_load": match_load,
            "bound": "read" if read_seconds > embed_seconds else "embed",
            "accuracy": float(accuracies.mean()),
            "otam_embed_seconds": per_video * OTAM_TEST_VIDEOS,
            "otam_match_seconds": per_episode * OTAM_EPISODES,
            "otam_seconds": per_video * OTAM_TEST_VIDEOS + per_episode * OTAM_EPISODES,
        }
        numbers.setdefault("per_episode_accuracies", {})[path] = accuracies
        numbers.setdefault("embeddings", {})[path] = (embedding, row_of)
    same = np.array_equal(*numbers.pop("per_episode_accuracies").values())
    numbers["same_accuracies"] = same
    # do the reader threads scale? (zarr decodes on a thread pool, but the rest of a read holds
    # the GIL): the same reads by one thread and, where given, by `more_workers`
    one_thread, _, one_thread_load = timed(
        lambda: read_only(features, batches_of(in_store_order), 1), device
    )
    now = numbers["paths"]["now"]
    numbers["read_scaling"] = {
        "workers": workers,
        "one_thread_seconds": one_thread,
        "one_thread_load": one_thread_load,
        "speedup_of_workers": one_thread / now["read_seconds"],
    }
    if more_workers is not None:
        more, _, _ = timed(
            lambda: read_only(features, batches_of(in_store_order), more_workers), device
        )
        numbers["read_scaling"] |= {
            "more_workers": more_workers,
            "more_workers_seconds": more,
            "speedup_of_more_workers": one_thread / more,
        }
    return numbers


def forward_per_episode(
    model: FewShotHead,
    features: SplitFeatures,
    embedded: tuple[VideoEmbedding, np.ndarray],
    episodes: list,
    *,
    autocast: AbstractContextManager,
) -> dict[str, Any]:
    """A full forward per episode (the store read for each), against the cached path's logits."""
    device = features.device
    stored = features.feature_set.frames

    def forwards() -> list[torch.Tensor]:
        logits = []
        with torch.no_grad(), autocast:
            for episode in episodes:
                support = features.videos(
                    episode.support, segment_frames(stored, features.frames, len(episode.support))
                )
                query = features.videos(
                    episode.query, segment_frames(stored, features.frames, len(episode.query))
                )
                labels = torch.from_numpy(episode.support_labels()).to(device)
                logits.append(model(support, labels, query))
        return logits

    seconds, naive, load = timed(forwards, device)
    cached = list(episode_logits(model, *embedded, episodes, autocast=autocast))
    return {
        "episodes": len(episodes),
        "seconds_per_episode": seconds / len(episodes),
        "load": load,
        "max_abs_logit_difference": max(
            float((a.float() - b.float()).abs().max()) for a, b in zip(cached, naive, strict=True)
        ),
        "max_abs_logit": max(float(b.abs().max()) for b in naive),
        "same_predictions": all(
            torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(cached, naive, strict=True)
        ),
    }


def table_of(numbers: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    columns = ("path", "store reads", "read s", "embed s (in memory)", "read + embed s")
    columns += ("match s", "bound")
    for column in (*columns, "SSv2-OTAM s (embed + match)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for path, p in numbers["paths"].items():
        table.add_row(
            path,
            str(p["store_reads"]),
            f"{p['read_seconds']:.2f} (load {p['read_load']:.1f})",
            f"{p['embed_in_memory_seconds']:.2f} (load {p['embed_load']:.1f})",
            f"{p['read_and_embed_seconds']:.2f} (load {p['read_and_embed_load']:.1f})",
            f"{p['match_seconds']:.2f} (load {p['match_load']:.1f})",
            p["bound"],
            f"{p['otam_seconds']:.1f} ({p['otam_embed_seconds']:.1f} + "
            f"{p['otam_match_seconds']:.1f})",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes matched per path")
    parser.add_argument("--naive-episodes", type=int, default=3, help="forward per episode")
    parser.add_argument("--test-classes", type=int, default=10)
    parser.add_argument("--other-classes", type=int, default=10, help="in the store, not tested")
    parser.add_argument("--videos", type=int, default=10, help="videos per class")
    parser.add_argument("--batch-size", type=int, default=32, help="as sact evaluate's default")
    parser.add_argument("--workers", type=int, default=4, help="as sact evaluate's default")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=EvalConfig().precision,
        help="precision policy, as sact evaluate --precision",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    console = Console()
    device = resolve_device(args.device)
    autocast = resolve_precision(args.precision, device)
    precision = f"{device}, {autocast.describe()}"
    classes = args.test_classes + args.other_classes
    with tempfile.TemporaryDirectory() as folder:
        parts = {
            "train": range(args.test_classes, classes),
            "val": range(0),
            "test": range(args.test_classes),
        }
        split = write_split_lists(Path(folder) / "split", classes, args.videos, parts)
        console.print(f"writing a shuffled store of {classes * args.videos} videos ...")
        location = write_synthetic_store(
            Path(folder) / "feats.zarr",
            classes=classes,
            videos_per_class=args.videos,
            frames=FRAMES,
            grid=GRID,
            dim=DIM,
            signal_dims=64,
            shard_size=64,
            relu=True,  # a CNN's features: half zeros, as the store's codec sees them
            shuffled=True,
        )
        feature_set = open_feature_set(location)
        pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
        torch.manual_seed(0)
        model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).eval().to(device)
        numbers = measure(
            model, feature_set, pool, frames=FRAMES, device=device, autocast=autocast,
            batch_size=args.batch_size, workers=args.workers, episodes=args.episodes,
            say=console.print,
        )  # fmt: skip
        features = SplitFeatures(feature_set, pool, frames=FRAMES, device=device, cache_gb=0.0)
        naive_episodes = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=QUERIES).episodes(
            args.naive_episodes, seed=0
        )
        naive = forward_per_episode(
            model, features, numbers.pop("embeddings")["now"], naive_episodes, autocast=autocast
        )
    now = numbers["paths"]["now"]
    cached_per_episode = (now["read_and_embed_seconds"] + now["match_seconds"]) / args.episodes
    numbers |= {
        "setting": f"{WAY}-way {SHOT}-shot, {QUERIES} query per class",
        "store_videos": classes * args.videos,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "forward_per_episode": naive,
        "speedup_over_forward_with_embedding": naive["seconds_per_episode"] / cached_per_episode,
        "speedup_over_forward_match_only": naive["seconds_per_episode"]
        / (now["match_seconds"] / args.episodes),
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
    }
    console.print(
        table_of(
            numbers,
            f"evaluation of {len(pool)} test videos (of {numbers['store_videos']} in a shuffled "
            f"store) + {args.episodes} episodes, {numbers['setting']} ({precision})",
        )
    )
    scaling = numbers["read_scaling"]
    console.print(
        f"the reads by one thread: {scaling['one_thread_seconds']:.2f} s (load "
        f"{scaling['one_thread_load']:.1f}); {args.workers} threads read "
        f"{scaling['speedup_of_workers']:.2f}x as fast"
    )
    console.print(
        f"same per-episode accuracies on both paths: {numbers['same_accuracies']}; a forward per "
        f"episode: {naive['seconds_per_episode']:.2f} s each (load {naive['load']:.1f}), "
        f"{numbers['speedup_over_forward_with_embedding']:.1f}x slower than embed once + match "
        f"({numbers['speedup_over_forward_match_only']:.1f}x than the match alone); logits max "
        f"|cached - forward| = {naive['max_abs_logit_difference']:.2e} (logits up to "
        f"{naive['max_abs_logit']:.2e}), same predictions: {naive['same_predictions']}"
    )
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
