"""Evaluation speed: embed each test video once and `match` per episode, against a full `forward`
per episode, on the same episodes, at ResNet-50 dims (T=8, P=7x7, D=2048, d_k=1152), 5-way.

    .venv/bin/python bench/evaluate.py [--naive-episodes 6] [--episodes 200] [--shot 5]
    .venv/bin/python bench/evaluate.py --device cuda [--no-amp]

Both paths run on ``--device`` under the autocast `sact evaluate` picks for it (bf16 on a GPU with
native bf16, fp16 before Ampere, none on the CPU; ``--no-amp``: fp32).

The cached path is charged its one-time embedding of every video its episodes use; its speedup
therefore grows with the number of episodes (10,000 in the protocol). Logits of the episodes both
paths run are compared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sact.common.devices import autocast_for, resolve_device, synchronize
from sact.fewshot import SACT
from sact.fewshot.accuracy import embed_videos, episode_logits
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import SplitFeatures, segment_frames
from sact.store.backends import open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

FRAMES, GRID, DIM, D_K = 8, (7, 7), 2048, 1152


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-episodes", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=200, help="episodes of the cached path")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10, help="test classes")
    parser.add_argument("--videos", type=int, default=10, help="videos per test class")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="autocast as sact evaluate picks it for the device (none on the CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    console = Console()
    device = resolve_device(args.device)
    autocast, amp_dtype = autocast_for(device) if args.amp else (nullcontext(), None)
    precision = f"{device}, {'fp32' if amp_dtype is None else amp_dtype}"

    with tempfile.TemporaryDirectory() as folder:
        parts = {"train": range(0), "val": range(0), "test": range(args.classes)}
        split = write_split_lists(Path(folder) / "split", args.classes, args.videos, parts)
        location = write_synthetic_store(
            Path(folder) / "feats.zarr",
            classes=args.classes,
            videos_per_class=args.videos,
            frames=FRAMES,
            grid=GRID,
            dim=DIM,
            signal_dims=64,
        )
        feature_set = open_feature_set(location)
        pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
        features = SplitFeatures(feature_set, pool, frames=FRAMES, device=device)
        sampler = EpisodeSampler(pool, way=args.way, shot=args.shot, queries=args.query)
        episodes = sampler.episodes(args.episodes, seed=0)
        torch.manual_seed(0)
        model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).eval().to(device)

        synchronize(device)
        started = time.perf_counter()
        positions = np.unique(np.concatenate([np.r_[e.support, e.query] for e in episodes]))
        embedding, row_of = embed_videos(
            model, features, positions, batch_size=16, autocast=autocast
        )
        synchronize(device)
        embedded = time.perf_counter()
        cached = list(episode_logits(model, embedding, row_of, episodes, autocast=autocast))
        synchronize(device)
        matched = time.perf_counter()

        naive = []
        naive_started = time.perf_counter()
        with torch.no_grad(), autocast:
            for episode in episodes[: args.naive_episodes]:
                support = features.videos(episode.support, centers(len(episode.support)))
                query = features.videos(episode.query, centers(len(episode.query)))
                labels = torch.from_numpy(episode.support_labels()).to(device)
                naive.append(model(support, labels, query))
        synchronize(device)
        naive_seconds = (time.perf_counter() - naive_started) / len(naive)

    difference = max(float((a - b).abs().max()) for a, b in zip(cached, naive, strict=False))
    scale = max(float(b.abs().max()) for b in naive)
    same_predictions = all(
        torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(cached, naive, strict=False)
    )
    embed_seconds, match_seconds = embedded - started, (matched - embedded) / len(episodes)
    cached_seconds = (matched - started) / len(episodes)
    numbers = {
        "setting": f"{args.way}-way {args.shot}-shot, {args.query} query per class",
        "videos_embedded": len(positions),
        "naive_episodes": len(naive),
        "cached_episodes": len(episodes),
        "naive_episodes_per_s": 1 / naive_seconds,
        "cached_episodes_per_s_with_embedding": 1 / cached_seconds,
        "match_only_episodes_per_s": 1 / match_seconds,
        "embedding_seconds": embed_seconds,
        "speedup_with_embedding": naive_seconds / cached_seconds,
        "speedup_match_only": naive_seconds / match_seconds,
        "max_abs_logit_difference": difference,
        "max_abs_logit": scale,
        "same_predictions": same_predictions,
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
    }
    table = Table(title=f"evaluation at ResNet-50 dims, {numbers['setting']} ({precision})")
    for column in ("path", "episodes", "episodes/s", "speedup"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("forward per episode", str(len(naive)), f"{1 / naive_seconds:.3f}", "1.0×")
    table.add_row(
        f"embed once ({len(positions)} videos, {embed_seconds:.1f} s) + match",
        str(len(episodes)),
        f"{1 / cached_seconds:.2f}",
        f"{naive_seconds / cached_seconds:.1f}×",
    )
    table.add_row(
        "match only (embedding amortised away)",
        str(len(episodes)),
        f"{1 / match_seconds:.2f}",
        f"{naive_seconds / match_seconds:.1f}×",
    )
    console.print(table)
    console.print(
        f"logits: max |cached − forward| = {difference:.2e} (logits up to {scale:.2e}); "
        f"same predictions: {same_predictions}"
    )
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


def centers(count: int) -> np.ndarray:
    return segment_frames(FRAMES, FRAMES, count)


if __name__ == "__main__":
    main()
