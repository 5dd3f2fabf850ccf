"""`sact sweep` against the same runs made one after another, and side by side in one process.

On a synthetic store (random features of the given shape, train/val/test classes), the same runs
(variants × seeds, the same budget and test episodes) are made three times, in turns:

(a) one after another, each as `sact train` and then `sact evaluate` make it (each run loads its
    own features), timed run by run, training and evaluation apart;
(b) by `run_sweep` (fewshot/sweep.py: the runs share the loaded features), one after another
    (`--side-by-side off`), timed as a whole;
(c) by `run_sweep` with `--side-by-side on`: each variant's seeds trained side by side, one
    stacked step for all of them (fewshot/side_by_side.py), timed as a whole;
in `--rounds` rounds, (a), (b), (c) in odd rounds and (c), (b), (a) in even ones.

The table gives each, the ratios (a)/(b) and (b)/(c), the load average beside each, whether (b)'s
runs are bitwise (a)'s (the CPU's promise), and how close (c)'s are to (b)'s: the largest weight
difference against fewshot/side_by_side.py's WEIGHT_TOLERANCE (the parameters whose gradient is
zero in exact arithmetic apart, against their AdamW bound), and whether every run's test
accuracies are the same. Side by side needs two seeds or more (`--seeds`, default 2).

`--otam` also extrapolates the sweep to SSv2-OTAM's comparison (bench/gpu.py's `sweep` part):
each run's training and evaluation scaled from the timed steps and episodes to the recipe's, the
sweep's shared loading counted once as measured; and side by side, that training divided by the
measured (b)/(c), a ratio of whole sweeps, pulled towards 1 by the evaluation both share, of the
bench's seeds stacked (the recipe stacks 3).

    .venv/bin/python bench/sweep.py [--steps 10] [--episodes 100] [--seeds 2] [--json sweep.json]
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
from safetensors.torch import load_file

from sact.common.options import checked
from sact.fewshot.config import TrainConfig
from sact.fewshot.evaluation import evaluate
from sact.fewshot.side_by_side import WEIGHT_TOLERANCE, ZERO_GRADIENT, adamw_noise_bound
from sact.fewshot.sweep import REPORT_JSON, RUNS_FOLDER, plan, run_sweep
from sact.fewshot.sweep_config import DEFAULT_VARIANTS, SweepConfig, read_recipe
from sact.fewshot.training import train
from sact.testing.stores import write_split_lists, write_synthetic_store

OTAM = "ssv2-otam"  # the recipe `--otam` extrapolates to
ARMS = ("one_by_one", "sweep", "side_by_side")  # (a), (b), (c)
LAST_WEIGHTS = "checkpoints/last/model.safetensors"


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


def swept(config: SweepConfig, *, side_by_side: str) -> dict[str, Any]:
    """(b) or (c): the same runs by `sact sweep`'s own function, `--side-by-side` off or on."""
    started = time.perf_counter()
    run_sweep(replace(config, side_by_side=side_by_side))
    return {"seconds": time.perf_counter() - started, "load": os.getloadavg()[0]}


def made(arm: str, config: SweepConfig) -> dict[str, Any]:
    if arm == "one_by_one":
        return one_by_one(config)
    return swept(config, side_by_side="on" if arm == "side_by_side" else "off")


def same_weights(first: Path, second: Path) -> bool:
    """Whether every run's checkpoints hold the same bytes in both folders."""
    names = sorted(path.relative_to(first) for path in first.rglob("model.safetensors"))
    return bool(names) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names
    )


def seed_accuracies(out: Path) -> list[list[list[float]]]:
    """Every row's test accuracy of each seed, per shot setting, from the sweep's report.json."""
    rows = json.loads((out / REPORT_JSON).read_text())["report"]["rows"]
    return [[score["seed_accuracies"] for score in row["scores"]] for row in rows]


def side_by_side_closeness(config: SweepConfig, sweep: Path, side_by_side: Path) -> dict:
    """How close (c)'s runs are to (b)'s: the largest difference of their last weights, the
    zero-gradient parameters apart (fewshot/side_by_side.py), and their test accuracies."""
    largest = largest_zero_gradient = 0.0
    for run in plan(replace(config, out=str(sweep))):
        one, other = (load_file(out / RUNS_FOLDER / run.name / LAST_WEIGHTS)
                      for out in (sweep, side_by_side))  # fmt: skip
        for name, weights in one.items():
            difference = float((weights - other[name]).abs().max()) if weights.numel() else 0.0
            if name in ZERO_GRADIENT:
                largest_zero_gradient = max(largest_zero_gradient, difference)
            else:
                largest = max(largest, difference)
    bound = adamw_noise_bound(plan(config)[0].train)
    return {
        "largest_weight_difference": largest,
        "weight_tolerance": WEIGHT_TOLERANCE,
        "largest_zero_gradient_difference": largest_zero_gradient,
        "zero_gradient_bound": bound,
        "within_tolerance": largest <= WEIGHT_TOLERANCE and largest_zero_gradient <= bound,
        "same_test_accuracies": seed_accuracies(sweep) == seed_accuracies(side_by_side),
    }


def otam_extrapolation(
    config: SweepConfig, a: dict[str, Any], b: dict[str, Any], *, rounds: int, ratio: float
) -> dict:
    """SSv2-OTAM's comparison (the recipe's variants, seeds, steps and test episodes), from this
    run: each measured run's training scaled by the recipe's steps over the timed ones, its
    evaluation by the recipe's episodes over the timed ones, per variant (a variant of the recipe
    not timed: as the mean of every timed run, and said in `variants_timed`); what the sweep spent
    besides its runs' training and evaluation (its shared loading, the episodes, the estimate)
    counted once, as measured. Side by side: that training divided by `ratio`, (b)/(c)."""
    recipe = read_recipe(OTAM).sweep
    steps, episodes = config.steps or config.training.iterations, config.episodes or 1
    per_variant: dict[str, list[dict[str, float]]] = {}
    for run in a["runs"]:
        per_variant.setdefault(run["run"].rsplit("-seed", 1)[0], []).append(run)
    train_s = evaluate_s = 0.0
    for name in recipe["variants"]:
        measured = per_variant.get(name, a["runs"])
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
        "variants": len(recipe["variants"]),
        "variants_timed": [name for name in recipe["variants"] if name in per_variant],
        "steps_per_run": recipe["steps"],
        "test_episodes_per_shot": recipe["episodes"],
        "train_minutes": train_s / 60,
        "evaluate_minutes": evaluate_s / 60,
        "minutes": total / 60,
        "side_by_side_minutes": (train_s / ratio + evaluate_s + overhead) / 60,
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
    """(a), (b) and (c) on `config`, `rounds` times, in turns: (a), (b), (c) in odd rounds and
    (c), (b), (a) in even ones, so no way always pays this process's first calls nor always meets
    the machine's load first. Each round's runs in folders of their own under `folder`."""
    if config.seeds < 2:
        raise ValueError(f"side by side (c) needs 2 seeds or more, got {config.seeds}")
    arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    same = True
    closeness = []
    for number in range(rounds):
        here = folder / f"round{number}"
        for arm in ARMS if number % 2 == 0 else ARMS[::-1]:
            arms[arm].append(made(arm, replace(config, out=str(here / arm))))
            if console is not None:
                numbers = arms[arm][-1]
                console.print(
                    f"round {number + 1}, {arm}: {numbers['seconds']:.1f} s "
                    f"(load {numbers['load']:.1f})"
                )
        same = same and same_weights(here / "one_by_one/runs", here / "sweep/runs")
        closeness.append(side_by_side_closeness(config, here / "sweep", here / "side_by_side"))
    result: dict[str, Any] = {"runs": len(arms["one_by_one"][0]["runs"]), "rounds": rounds}
    for arm, measured in arms.items():
        result[arm] = {
            "seconds": sum(r["seconds"] for r in measured) / rounds,
            "load": sum(r["load"] for r in measured) / rounds,
            "rounds": measured,
        }
    result["bitwise_same_runs"] = same
    result["side_by_side_closeness"] = {
        "largest_weight_difference": max(c["largest_weight_difference"] for c in closeness),
        "weight_tolerance": WEIGHT_TOLERANCE,
        "within_tolerance": all(c["within_tolerance"] for c in closeness),
        "same_test_accuracies": all(c["same_test_accuracies"] for c in closeness),
        "rounds": closeness,
    }
    result["ratio"] = result["one_by_one"]["seconds"] / result["sweep"]["seconds"]
    result["side_by_side_ratio"] = result["sweep"]["seconds"] / result["side_by_side"]["seconds"]
    if otam:
        runs = [run for one in arms["one_by_one"] for run in one["runs"]]
        result["otam"] = otam_extrapolation(
            config, {"runs": runs}, {"seconds": result["sweep"]["seconds"]}, rounds=rounds,
            ratio=result["side_by_side_ratio"],
        )  # fmt: skip
    return result


def closeness_words(closeness: dict[str, Any]) -> str:
    """(c)'s runs against (b)'s, in a table cell."""
    within = "within" if closeness["within_tolerance"] else "NOT within"
    accuracies = "same" if closeness["same_test_accuracies"] else "DIFFERENT"
    return (
        f"weights ≤ {closeness['largest_weight_difference']:.1e} ({within} "
        f"{closeness['weight_tolerance']:g}), {accuracies} test accuracies"
    )


def table(result: dict[str, Any], device: str) -> Table:
    out = Table(title=f"sact sweep against the same {result['runs']} runs one by one ({device})")
    for column in ("way", "seconds", "load", "ratio", "same runs"):
        out.add_column(column, justify="left" if column == "way" else "right")
    a, b, c = (result[arm] for arm in ARMS)
    out.add_row("(a) one by one", f"{a['seconds']:.1f}", f"{a['load']:.1f}", "", "")
    same = "bitwise (a)'s" if result["bitwise_same_runs"] else "differ from (a)'s"
    out.add_row("(b) sact sweep", f"{b['seconds']:.1f}", f"{b['load']:.1f}",
                f"(a)/(b) {result['ratio']:.2f}", same)  # fmt: skip
    out.add_row("(c) sact sweep --side-by-side on", f"{c['seconds']:.1f}", f"{c['load']:.1f}",
                f"(b)/(c) {result['side_by_side_ratio']:.2f}",
                closeness_words(result["side_by_side_closeness"]))  # fmt: skip
    if "otam" in result:
        o = result["otam"]
        out.add_row(
            f"SSv2-OTAM extrapolated: {o['runs']} runs × {o['steps_per_run']:,} steps, "
            f"{o['test_episodes_per_shot']:,} test episodes per shot "
            f"(goal {o['goal_minutes']:.0f} min): (b); (c)",
            f"{60 * o['minutes']:.0f}; {60 * o['side_by_side_minutes']:.0f}", "", "", "",
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", type=int, default=2, help="2 or more: (c) stacks them")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=100, help="test episodes per shot")
    parser.add_argument("--train-classes", type=int, default=10)
    parser.add_argument("--eval-classes", type=int, default=5)
    parser.add_argument("--videos", type=int, default=10, help="videos per class")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--d-k", type=int, default=64)
    parser.add_argument("--episodes-per-step", type=int, default=TrainConfig().tasks_per_batch)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="(a), (b), (c) in turns")
    parser.add_argument("--otam", action="store_true", help="extrapolate to SSv2-OTAM's sweep")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    if options.seeds < 2:
        parser.error(f"--seeds must be 2 or more for (c), side by side; got {options.seeds}")
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
                             tasks_per_batch=options.episodes_per_step,
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
