"""How many of SA-CT's predictions bfloat16 autocast flips against float32, on trained runs.

For each SA-CT run: its test videos embedded once in float32 (the reference) and once under CPU
bfloat16 autocast, then the same episodes scored with `match` (under autocast for the second).
Two bfloat16 embeddings are compared: the library's (the values' path in float32, only the keys
in bfloat16, docs/MODEL.md) and one whose values also come out of bfloat16 (input norm, TMixer and
W_v under autocast, as `embed` ran them before issue 9), which shows what the float32 values buy.

    .venv/bin/python bench/flips.py sact-demo/motion/runs/sact/seed0 [RUN...] [--episodes 1000]

CPU autocast is a proxy for CUDA's (same op lists, same output dtypes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sact.fewshot import SACT
from sact.fewshot.accuracy import embed_videos
from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import SplitFeatures, segment_frames
from sact.fewshot.model import SACTEmbedding
from sact.store.backends import open_feature_set

BFLOAT16 = torch.autocast("cpu", dtype=torch.bfloat16)


def embed_as_before(model: SACT, videos: torch.Tensor) -> SACTEmbedding:
    """`SACT.embed` as it ran before issue 9: everything under bfloat16 autocast, values too."""
    with torch.no_grad(), BFLOAT16:
        x = videos.to(model.to_value.weight.dtype)  # (B, T, P, D)
        if model.input_norm is not None:
            x = model.input_norm(x)
        phi = model.tmixer(x) if model.tmixer is not None else x  # (B, T', P, D)
        f = model.positional(phi)  # (B, T', P, D)
        return SACTEmbedding(
            support_keys=model.norm_support(model.to_support(f)),  # (B, T', P, d_k)
            query_keys=model.norm_query(model.to_query(f)),  # (B, T', P, d_k)
            values=model.to_value(phi),  # (B, T', P, d_k), bfloat16
        )


def flips_of_run(run: Path, *, shots: list[int], episodes: int, queries: int, seed: int) -> dict:
    checkpoint = read_checkpoint(run / "checkpoints" / "last")
    model = checkpoint.build().eval()
    if not isinstance(model, SACT):
        raise SystemExit(f"{run} is a {checkpoint.model} run; flips are measured for SA-CT")
    feature_set = open_feature_set(checkpoint.store, checkpoint.feature_set)
    pool = build_pool(feature_set, resolve_split(feature_set, checkpoint.split), "test")
    features = SplitFeatures(feature_set, pool, frames=model.frames, device=torch.device("cpu"))
    positions = np.arange(len(pool))
    exact, rows = embed_videos(model, features, positions, batch_size=32)
    mixed, _ = embed_videos(model, features, positions, batch_size=32, autocast=BFLOAT16)
    # the same videos again, in the order of `rows`, for the embedding as it was before issue 9
    stored = feature_set.frames
    videos = torch.cat(
        [
            features.videos(batch, segment_frames(stored, features.frames, len(batch)))
            for batch in np.array_split(positions, max(1, len(positions) // 32))
        ]
    )  # (V, T, P, D)
    old = embed_as_before(model, videos)
    result = {"run": str(run), "shots": {}}
    for shot in shots:
        sampled = EpisodeSampler(pool, way=5, shot=shot, queries=queries).episodes(
            episodes, seed=seed
        )
        counts = {"float32 values": 0, "bfloat16 values": 0, "predictions": 0}
        with torch.no_grad():
            for episode in sampled:
                support = torch.from_numpy(rows[episode.support])
                query = torch.from_numpy(rows[episode.query])
                labels = torch.from_numpy(episode.support_labels())
                reference = model.match(exact[support], labels, exact[query]).argmax(dim=1)
                with BFLOAT16:
                    library = model.match(mixed[support], labels, mixed[query]).argmax(dim=1)
                    before = model.match(old[support], labels, old[query]).argmax(dim=1)
                counts["float32 values"] += int((library != reference).sum())
                counts["bfloat16 values"] += int((before != reference).sum())
                counts["predictions"] += len(reference)
        result["shots"][shot] = counts
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="SA-CT run directories")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5, help="per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [
        flips_of_run(
            run, shots=args.shots, episodes=args.episodes, queries=args.queries, seed=args.seed
        )
        for run in args.runs
    ]
    table = Table(title="SA-CT predictions flipped by CPU bfloat16 autocast against float32")
    for column in ("run", "shot", "predictions", "values in float32 (sact)", "values in bfloat16"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for result in results:
        for shot, counts in result["shots"].items():
            total = counts["predictions"]
            table.add_row(
                "/".join(Path(result["run"]).parts[-3:]),
                str(shot),
                str(total),
                f"{counts['float32 values']} ({100 * counts['float32 values'] / total:.2f}%)",
                f"{counts['bfloat16 values']} ({100 * counts['bfloat16 values'] / total:.2f}%)",
            )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
