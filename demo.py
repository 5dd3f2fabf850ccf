"""`sact demo`: the whole chain on a synthetic dataset, offline, in minutes on a laptop CPU.

    generate videos (extract/synthetic.py: only the motion defines the class)
        ─▶ sact extract (a small random-init timm backbone)
        ─▶ sact train: SA-CT and TRX on the same store (nothing to train for the nearest mean)
        ─▶ sact evaluate: all of them on identical test episodes, SA-CT's paired differences
        ─▶ one table, demo.json, the training curves and an attention figure

Every stage is the library's own entry point, called as the command line calls it, and every stage
resumes: run the same command again after a kill and finished work is skipped.

The defaults were chosen so the demo finishes in minutes on two CPU cores (README.md holds the
measured table): 64-pixel videos and a ViT-Tiny at 64 px (a 4×4 patch grid, D = 192) with seeded
random weights, since a demo cannot download pretrained ones; a small projection width (d_k = 128)
and a higher learning rate with a short warm-up than `sact train`'s defaults, so 300 steps suffice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sact.config import DemoConfig, ExplainConfig
from sact.explain import explain
from sact.extract.errors import SactError
from sact.extract.files import write_text_atomic
from sact.extract.pipeline import ExtractConfig, run_extraction
from sact.extract.synthetic import ACTION_CLASSES, SyntheticDatasetConfig, make_synthetic_dataset
from sact.fewshot.evaluation import EvalConfig, evaluate
from sact.fewshot.kinds import ModelKind, model_kind
from sact.fewshot.training import CONFIG_FILE, TrainConfig, train

RESULTS_FILE = "demo.json"
REFERENCE = "sact"  # the model every other one is compared with
KINDS = ("sact", "nearest-mean", "trx")  # what the demo trains, the reference first


def demo_kinds() -> list[ModelKind]:
    return [model_kind(name) for name in KINDS]


class DemoError(SactError):
    """A demo stage that failed; the message is one line for the user."""


@dataclass(frozen=True)
class DemoResult:
    results: dict[str, Any]  # what demo.json holds
    table: Table
    path: Path


def _stage(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def generate(config: DemoConfig, console: Console) -> Path:
    """The synthetic dataset under out/dataset; videos already written are kept."""
    dataset_config = SyntheticDatasetConfig(
        root=config.out / "dataset",
        videos_per_class=config.videos_per_class,
        frames=config.video_frames,
        size=config.video_size,
        suffix=config.video_suffix,
        seed=config.seed,
    )
    total = len(ACTION_CLASSES) * config.videos_per_class
    columns = (TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("generate", total=total)
        make_synthetic_dataset(dataset_config, on_video=lambda _: progress.advance(task))
    return dataset_config.root


def extract(config: DemoConfig, dataset: Path, console: Console) -> str:
    store = str(config.out / "feats.zarr")
    summary = run_extraction(
        ExtractConfig(
            videos=dataset / "videos",
            out=store,
            split=str(dataset),
            backbone=config.backbone,
            random_init=True,
            frames=config.frames,
            size=config.size,
            device=config.device,
            workers=config.workers,
            seed=config.seed,
            name="demo",
        ),
        console=console,
    )
    if summary.failed or summary.pending:
        raise DemoError(
            f"extraction left {summary.failed} failed and {summary.pending} pending videos; "
            "run the demo again to retry them"
        )
    return store


def train_models(
    config: DemoConfig, dataset: Path, store: str, console: Console
) -> dict[str, Path]:
    """One run per model under out/runs/<model>; a run already there is resumed (or kept)."""
    runs = {}
    for kind in demo_kinds():
        run_dir = config.out / "runs" / kind.name
        console.print(f"[bold]{kind.display_name}")
        train(
            TrainConfig(
                feats=store,
                split=str(dataset),
                model=kind.name,
                way=config.way,
                shot=config.train_shot,
                query=config.train_query,
                d_k=config.d_k if "d_k" in kind.options else None,
                iterations=config.iterations,
                lr=config.lr,
                warmup=config.warmup,
                tasks_per_batch=config.tasks_per_batch,
                val_every=config.val_every,
                val_episodes=config.val_episodes,
                out=str(run_dir),
                seed=config.seed,
                device=config.device,
                resume=(run_dir / CONFIG_FILE).exists(),
            ),
            console=console,
        )
        runs[kind.name] = run_dir
    return runs


def compared_kinds() -> list[ModelKind]:
    """The kinds the reference is compared with: every other one."""
    return [kind for kind in demo_kinds() if kind.name != REFERENCE]


def demo_table(evaluation: dict[str, Any]) -> Table:
    """Accuracy ± 95% CI of each model, then the reference's paired difference to each other."""
    way = evaluation["settings"][0]["way"]
    table = Table(
        title=f"sact demo: {way}-way accuracy on unseen test classes (%, ± 95% CI), "
        f"chance {100 / way:.0f}%"
    )
    table.add_column("setting")
    table.add_column("episodes", justify="right")
    reference = model_kind(REFERENCE).display_name
    for kind in demo_kinds():
        table.add_column(kind.display_name, justify="right")
    for kind in compared_kinds():
        table.add_column(f"{reference} − {kind.display_name}", justify="right")
    for setting in evaluation["settings"]:
        entry = by_model(setting, evaluation)
        scores, paired = entry["accuracy"], entry["sact_minus"]
        best = max(score["accuracy"] for score in scores.values())
        row = [f"{setting['way']}-way {setting['shot']}-shot", str(setting["episodes"])]
        for kind in demo_kinds():
            score = scores[kind.name]
            text = f"{100 * score['accuracy']:.1f} ± {100 * score['ci95']:.1f}"
            row.append(f"[bold]{text}" if score["accuracy"] == best else text)
        for kind in compared_kinds():
            diff = paired[kind.name]
            significant = abs(diff["difference"]) > diff["ci95"]
            text = f"{100 * diff['difference']:+.1f} ± {100 * diff['ci95']:.1f}"
            row.append(text if significant else f"[dim]{text}")
        table.add_row(*row)
    return table


def by_model(setting: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """One shot setting of the evaluation, keyed by model kind instead of run directory."""
    kind = {name: run["model"] for name, run in evaluation["runs"].items()}
    return {
        "way": setting["way"],
        "shot": setting["shot"],
        "episodes": setting["episodes"],
        "accuracy": {kind[name]: score for name, score in setting["runs"].items()},
        "sact_minus": {kind[name]: diff for name, diff in setting["paired_differences"].items()},
    }


def pick_explained_pair(dataset: Path) -> tuple[str, str]:
    """A query and a support video of the same test class: the first two of the test list."""
    first, second = (dataset / "testlist.txt").read_text(encoding="utf-8").splitlines()[:2]
    return first.split("/", 1)[1], second.split("/", 1)[1]


def run_demo(config: DemoConfig, console: Console | None = None) -> DemoResult:
    """Generate, extract, train every model kind, evaluate them on the same episodes, draw."""
    console = console or Console(stderr=True)
    config.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    _stage(console, "1/5 generate a synthetic few-shot action dataset")
    dataset = generate(config, console)
    seconds["generate"] = time.perf_counter() - started

    _stage(console, f"2/5 extract features ({config.backbone}, random init, {config.size} px)")
    mark = time.perf_counter()
    store = extract(config, dataset, console)
    seconds["extract"] = time.perf_counter() - mark

    names = [kind.display_name for kind in demo_kinds()]
    _stage(console, f"3/5 train {', '.join(names[:-1])} and {names[-1]} on the same store")
    mark = time.perf_counter()
    runs = train_models(config, dataset, store, console)
    seconds["train"] = time.perf_counter() - mark

    _stage(console, f"4/5 evaluate all {len(names)} on identical test episodes")
    mark = time.perf_counter()
    evaluation = evaluate(
        EvalConfig(
            run=str(runs[REFERENCE]),
            compare=tuple(str(runs[kind.name]) for kind in compared_kinds()),
            way=config.way,
            shots=config.shots,
            episodes=config.episodes,
            seed=config.seed,
            device=config.device,
            episodes_file=str(config.out / "test_episodes.json"),
            out=str(config.out / "evaluation.json"),
        ),
        console=console,
    )
    seconds["evaluate"] = time.perf_counter() - mark

    _stage(console, "5/5 draw SA-CT's attention")
    mark = time.perf_counter()
    query, support = pick_explained_pair(dataset)
    attention_png = explain(
        ExplainConfig(
            run=runs[REFERENCE], query=query, support=support, out=config.out / "attention.png"
        )
    )
    seconds["explain"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    table = demo_table(evaluation)
    results = {
        "config": config.to_json(),
        "dataset": str(dataset),
        "store": store,
        "runs": {model: str(run) for model, run in runs.items()},
        "settings": [by_model(setting, evaluation) for setting in evaluation["settings"]],
        "figures": {
            "attention": str(attention_png),
            **{f"training_curve_{m}": str(runs[m] / "training_curve.png") for m in runs},
        },
        "seconds": {stage: round(value, 1) for stage, value in seconds.items()},
    }
    path = config.out / RESULTS_FILE
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    return DemoResult(results=results, table=table, path=path)
