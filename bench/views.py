"""Augmented views against over-fitting (issue 10), on the demo's data, side by side in one run.

1. The demo's synthetic dataset (`sact demo`'s videos and split: 14 train motions, random-init
   ViT-Tiny at 64 px), extracted **once, in one run**, with the canonical view and `--views K`
   random views (jittered frames, a random crop the same over the clip, no flip): seconds per
   video of each view against the canonical one's, and the bytes each view takes.
2. SA-CT with the demo's settings for `--steps` steps, twice per seed: on the canonical view only
   (`--views canonical`) and on every stored view (`--views all`), same seeds (so the same
   episodes, frames and initial weights). Every `--val-every` steps: val accuracy (the run's own
   fixed val episodes), test accuracy and train accuracy (fixed 5-way 5-shot episodes of the test
   and the train classes), all on the canonical view, as evaluation reads it.
3. The over-fitting gap of each: best val minus final val, and final train minus final test.

    .venv/bin/python bench/views.py [--steps 1000] [--views 4] [--seeds 0 1 2] [--json views.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sact.demo.config import DemoConfig
from sact.demo.run import extract_config, generate
from sact.extract.pipeline import run_extraction
from sact.fewshot.accuracy import score_episodes
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.features import SplitFeatures
from sact.fewshot.training import METRICS_FILE, read_metrics, train
from sact.store.backends import open_feature_set

EPISODES = 200  # fixed test and train episodes scored at every validation


def extract_views(demo: DemoConfig, dataset: Path, store: str, views: int, console: Console):
    """The canonical view and `views` random views in one run: (per-view summary, bytes)."""
    summary = run_extraction(
        extract_config(demo, dataset, store, random_views=views), console=console
    )
    feature_set = open_feature_set(store, "demo")
    sizes = {name: int(view.features.nbytes_stored()) for name, view in feature_set.views.items()}
    return summary, sizes


class Scorer:
    """Accuracy of a model on fixed 5-way 5-shot episodes of one split part, canonical view."""

    def __init__(self, store: str, split: str, part: str, *, seed: int, frames: int) -> None:
        feature_set = open_feature_set(store, "demo")
        pool = build_pool(feature_set, resolve_split(feature_set, split), part)
        sampler = EpisodeSampler(pool, way=5, shot=5, queries=1)
        self.episodes = sampler.episodes(EPISODES, seed)
        self.features = SplitFeatures(
            feature_set, pool, frames=frames, device=torch.device("cpu"), cache_gb=1.0
        )

    def __call__(self, model: torch.nn.Module) -> float:
        (accuracies,) = score_episodes(model, [self.features], [self.episodes], batch_size=64)
        return float(accuracies.mean())


def train_run(
    demo: DemoConfig,
    dataset: Path,
    store: str,
    out: Path,
    *,
    views: str,
    seed: int,
    steps: int,
    val_every: int,
    scorers: dict[str, Scorer],
) -> list[dict[str, Any]]:
    """One SA-CT run with the demo's settings; returns its metrics, scored at each validation."""
    config = replace(
        demo.training,
        feats=store,
        feature_set="demo",
        split=str(dataset),
        model="sact",
        iterations=steps,
        val_every=val_every,
        out=str(out),
        seed=seed,
        device=demo.device,
        views=views,
    )
    train(
        config,
        on_validation=lambda model: {
            f"{part}_accuracy": score(model) for part, score in scorers.items()
        },
    )
    return [record for record in read_metrics(out / METRICS_FILE) if "val_accuracy" in record]


def gaps(curve: list[dict[str, Any]]) -> dict[str, float]:
    val = np.array([record["val_accuracy"] for record in curve])
    final = curve[-1]
    return {
        "best_val": float(val.max()),
        "final_val": float(val[-1]),
        "best_minus_final_val": float(val.max() - val[-1]),
        "final_train": final["train_accuracy"],
        "final_test": final["test_accuracy"],
        "train_minus_test": final["train_accuracy"] - final["test_accuracy"],
        "best_test": float(max(record["test_accuracy"] for record in curve)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--views", type=int, default=4, help="random views besides the canonical")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="keep the dataset, store and runs here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    console = Console(stderr=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="sact-bench-views-") as scratch:
        root = args.out or Path(scratch)
        demo = replace(DemoConfig(), out=root)
        dataset = generate(demo, demo.task, root, console)
        store = str(root / "feats.zarr")
        summary, sizes = extract_views(demo, dataset, store, args.views, console)
        scorers = {
            part: Scorer(store, str(dataset), part, seed=0, frames=demo.frames)
            for part in ("train", "test")
        }
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {"canonical": {}, "all": {}}
        started = time.perf_counter()
        for seed in args.seeds:
            for views in runs:
                console.print(f"[bold]SA-CT, seed {seed}, views: {views}")
                runs[views][seed] = train_run(
                    demo,
                    dataset,
                    store,
                    root / "runs" / f"{views}-{seed}",
                    views=views,
                    seed=seed,
                    steps=args.steps,
                    val_every=args.val_every,
                    scorers=scorers,
                )
        train_seconds = time.perf_counter() - started

    out = Console()
    cost = Table(
        title=f"extraction, one run: canonical + {args.views} random views, {summary.videos} videos"
    )
    for column in ("view", "videos", "s/video", "× canonical", "bytes", "× canonical"):
        cost.add_column(column, justify="left" if column == "view" else "right")
    canonical = summary.views[0]
    for view in summary.views:
        cost.add_row(
            view.view,
            str(view.extracted_now),
            f"{view.seconds_per_video:.3f}",
            f"{view.seconds_per_video / canonical.seconds_per_video:.2f}",
            f"{sizes[view.view] / 2**20:.1f} MiB",
            f"{sizes[view.view] / sizes['canonical']:.2f}",
        )
    out.print(cost)

    steps = [record["step"] for record in runs["canonical"][args.seeds[0]]]
    curves = Table(
        title=f"SA-CT accuracy over training (%, mean of seeds {args.seeds}; canonical view)"
    )
    curves.add_column("step", justify="right")
    for views in runs:
        for part in ("val", "test", "train"):
            curves.add_column(
                f"{part} ({'1 view' if views == 'canonical' else f'{1 + args.views} views'})",
                justify="right",
            )

    def mean_at(views: str, index: int, part: str) -> float:
        return 100 * float(
            np.mean([runs[views][seed][index][f"{part}_accuracy"] for seed in args.seeds])
        )

    for index, step in enumerate(steps):
        curves.add_row(
            str(step),
            *(
                f"{mean_at(views, index, part):.1f}"
                for views in runs
                for part in ("val", "test", "train")
            ),
        )
    out.print(curves)

    summary_table = Table(title="over-fitting gap (percentage points, mean ± std over seeds)")
    summary_table.add_column("trained on")
    keys = (
        "best_val",
        "final_val",
        "best_minus_final_val",
        "final_test",
        "best_test",
        "final_train",
        "train_minus_test",
    )
    for key in keys:
        summary_table.add_column(key.replace("_", " "), justify="right")
    results = {}
    for views in runs:
        per_seed = [gaps(runs[views][seed]) for seed in args.seeds]
        results[views] = per_seed
        label = "canonical only (1 view)" if views == "canonical" else f"all {1 + args.views} views"
        spread = {key: 100 * np.array([g[key] for g in per_seed]) for key in keys}
        summary_table.add_row(
            label, *(f"{spread[key].mean():.1f} ± {spread[key].std():.1f}" for key in keys)
        )
    out.print(summary_table)
    record = {
        "args": {key: str(value) for key, value in vars(args).items()},
        "extraction": summary.to_json(),
        "bytes": sizes,
        "curves": {
            views: {str(seed): curve for seed, curve in by_seed.items()}
            for views, by_seed in runs.items()
        },
        "gaps": results,
        "train_seconds": train_seconds,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
