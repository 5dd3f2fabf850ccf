"""`sact sweep` against the same runs made one after another, side by side in one process.

On a synthetic store (random features of the given shape, train/val/test classes), the same runs
(variants × seeds, the same budget and test episodes) are made twice, in turns:

(a) one after another, each as `sact train` and then `sact evaluate` make it (each run loads its
    own features), timed run by run, training and evaluation apart;
(b) by `run_sweep` (fewshot/sweep.py: the runs share the loaded features), timed as a whole;
in `--rounds` rounds, (a) first in odd rounds and (b) first in even ones.

The table gives both, their ratio (a)/(b), the load average beside each, and whether (b)'s runs
are bitwise (a)'s (the CPU's promise). `--otam` also extrapolates the sweep to SSv2-OTAM's
comparison (bench/gpu.py's `sweep` part): each run's training and evaluation scaled from the timed
steps and episodes to the recipe's, the sweep's shared loading counted once as measured.

    .venv/bin/python bench/sweep.py [--steps 20] [--episodes 200] [--seeds 1] [--json sweep.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from sact.common.options import checked
from sact.fewshot.evaluation import evaluate
from sact.fewshot.sweep import plan, run_sweep
from sact.fewshot.sweep_config import DEFAULT_VARIANTS, SweepConfig, read_recipe
from sact.fewshot.training import train
from sact.testing.stores import write_split_lists, write_synthetic_store

OTAM = "ssv2-otam"  # the recipe `--otam` extrapolates to


def synthetic_store(
    folder: Path, *, train_classes: int, eval_classes: int, videos: int, **shape: Any
) -> tuple[str, str]:
    """A store of train, val and test classes of random features of `shape`, and its split."""
    classes = train_classes + 2 * eval_classes
    parts = {
        "train": range(train_classes),
        "val": range(train_classes, train_classes + eval_classes),
        "test": range(train_classes + eval_classes, classes),
    }
    split = str(write_split_lists(folder / "split", classes, videos, parts))
    store = write_synthetic_store(
        folder / "feats.zarr", classes=classes, videos_per_class=videos, split=split, **shape
    )
    return store, split


def one_by_one(config: SweepConfig) -> dict[str, Any]:
    """(a): every run as `sact train` then `sact evaluate` make it, each timed."""
    runs = []
    started = time.perf_counter()
    for run in plan(config):
        mark = time.perf_counter()
        train(run.train)
        trained = time.perf_counter()
        evaluate(checked(run.evaluation))
        runs.append(
            {
                "run": run.name,
                "train_s": trained - mark,
                "evaluate_s": time.perf_counter() - trained,
            }
        )
    return {"seconds": time.perf_counter() - started, "load": os.getloadavg()[0], "runs": runs}


def swept(config: SweepConfig) -> dict[str, Any]:
    """(b): the same runs by `sact sweep`'s own function."""
    started = time.perf_counter()
    run_sweep(config)
    return {"seconds": time.perf_counter() - started, "load": os.getloadavg()[0]}


def same_weights(first: Path, second: Path) -> bool:
    """Whether every run's checkpoints hold the same bytes in both folders."""
    names = sorted(path.relative_to(first) for path in first.rglob("model.safetensors"))
    return bool(names) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names
    )


def otam_extrapolation(
    config: SweepConfig, a: dict[str, Any], b: dict[str, Any], *, rounds: int
) -> dict:
    """SSv2-OTAM's comparison (the recipe's variants, seeds, steps and test episodes), from this
    run: each measured run's training scaled by the recipe's steps over the timed ones, its
    evaluation by the recipe's episodes over the timed ones, per variant; what the sweep spent
    besides its runs' training and evaluation (its shared loading, the episodes, the estimate)
    counted once, as measured."""
    recipe = read_recipe(OTAM).sweep
    steps, episodes = config.steps or config.training.iterations, config.episodes or 1
    per_variant: dict[str, list[dict[str, float]]] = {}
    for run in a["runs"]:
        per_variant.setdefault(run["run"].rsplit("-seed", 1)[0], []).append(run)
    train_s = evaluate_s = 0.0
    for name in recipe["variants"]:
        measured = per_variant.get(name)
        if not measured:
            raise SystemExit(f"--otam needs every variant of the recipe timed; {name} was not")
        mean_train = sum(r["train_s"] for r in measured) / len(measured)
        mean_evaluate = sum(r["evaluate_s"] for r in measured) / len(measured)
        train_s += recipe["seeds"] * mean_train * recipe["steps"] / steps
        evaluate_s += recipe["seeds"] * mean_evaluate * recipe["episodes"] / episodes
    # what the sweep spent besides its runs' own training and evaluation (a round's worth)
    runs_seconds = sum(r["train_s"] + r["evaluate_s"] for r in a["runs"]) / rounds
    overhead = max(0.0, b["seconds"] - runs_seconds)
    total = train_s + evaluate_s + overhead
    return {
        "runs": len(recipe["variants"]) * recipe["seeds"],
        "steps_per_run": recipe["steps"],
        "test_episodes_per_shot": recipe["episodes"],
        "train_minutes": train_s / 60,
        "evaluate_minutes": evaluate_s / 60,
        "minutes": total / 60,
        "goal_minutes": 60.0,
    }


def measure(
    config: SweepConfig,
    folder: Path,
    *,
    rounds: int = 1,
    otam: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """(a) and (b) on `config`, `rounds` times, in turns: (a) first in odd rounds, (b) first in
    even ones, so neither always pays this process's first calls nor always meets the machine's
    load first. Each round's runs in folders of their own under `folder`."""
    arms: dict[str, list[dict[str, Any]]] = {"one_by_one": [], "sweep": []}
    same = True
    for number in range(rounds):
        here = folder / f"round{number}"
        order = ("one_by_one", "sweep") if number % 2 == 0 else ("sweep", "one_by_one")
        for arm in order:
            out = replace(config, out=str(here / arm))
            arms[arm].append(one_by_one(out) if arm == "one_by_one" else swept(out))
            if console is not None:
                numbers = arms[arm][-1]
                console.print(
                    f"round {number + 1}, {arm}: {numbers['seconds']:.1f} s "
                    f"(load {numbers['load']:.1f})"
                )
        same = same and same_weights(here / "one_by_one/runs", here / "sweep/runs")
    a, b = arms["one_by_one"], arms["sweep"]
    result = {
        "runs": len(a[0]["runs"]),
        "rounds": rounds,
        "one_by_one": {
            "seconds": sum(r["seconds"] for r in a) / rounds,
            "load": sum(r["load"] for r in a) / rounds,
            "rounds": a,
        },
        "sweep": {
            "seconds": sum(r["seconds"] for r in b) / rounds,
            "load": sum(r["load"] for r in b) / rounds,
            "rounds": b,
        },
        "bitwise_same_runs": same,
    }
    result["ratio"] = result["one_by_one"]["seconds"] / result["sweep"]["seconds"]
    if otam:
        runs = [run for one in a for run in one["runs"]]
        sweep_seconds = result["sweep"]["seconds"]
        result["otam"] = otam_extrapolation(
            config, {"runs": runs}, {"seconds": sweep_seconds}, rounds=rounds
        )
    return result


def table(result: dict[str, Any], device: str) -> Table:
    out = Table(title=f"sact sweep against the same {result['runs']} runs one by one ({device})")
    for column in ("way", "seconds", "load", "ratio (a)/(b)", "same runs"):
        out.add_column(column, justify="left" if column == "way" else "right")
    a, b = result["one_by_one"], result["sweep"]
    out.add_row("(a) one by one", f"{a['seconds']:.1f}", f"{a['load']:.1f}", "", "")
    same = "bitwise" if result["bitwise_same_runs"] else "differ"
    out.add_row("(b) sact sweep", f"{b['seconds']:.1f}", f"{b['load']:.1f}",
                f"{result['ratio']:.2f}", same)  # fmt: skip
    if "otam" in result:
        o = result["otam"]
        out.add_row(
            f"SSv2-OTAM extrapolated: {o['runs']} runs × {o['steps_per_run']:,} steps, "
            f"{o['test_episodes_per_shot']:,} test episodes per shot "
            f"(goal {o['goal_minutes']:.0f} min)",
            f"{60 * o['minutes']:.0f}", "", "", "",
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=200, help="test episodes per shot")
    parser.add_argument("--train-classes", type=int, default=20)
    parser.add_argument("--eval-classes", type=int, default=5)
    parser.add_argument("--videos", type=int, default=10, help="videos per class")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--d-k", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="(a) and (b) in turns")
    parser.add_argument("--otam", action="store_true", help="extrapolate to SSv2-OTAM's sweep")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="sact-bench-sweep-") as temporary:
        folder = Path(temporary)
        store, split = synthetic_store(
            folder,
            train_classes=options.train_classes,
            eval_classes=options.eval_classes,
            videos=options.videos,
            frames=options.frames,
            grid=(options.grid, options.grid),
            dim=options.dim,
            signal_dims=min(64, options.dim),
        )
        base = SweepConfig()
        config = replace(
            base,
            feats=store,
            split=split,
            variants=tuple(options.variants.split(",")),
            seeds=options.seeds,
            steps=options.steps,
            episodes=options.episodes,
            device=options.device,
            training=replace(base.training, d_k=options.d_k, val_every=options.steps,
                             val_episodes=50, warmup=max(1, options.steps // 10)),
        )  # fmt: skip
        checked(config)
        result = measure(config, folder, rounds=options.rounds, otam=options.otam, console=console)
    result |= {"options": vars(options) | {"json": str(options.json)},
               "torch_threads": torch.get_num_threads()}  # fmt: skip
    console.print(table(result, options.device))
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
