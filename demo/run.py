"""`sact demo`: a suite of synthetic few-shot tasks with known answers, offline, on a laptop CPU.

For each task (demo/synthetic.py, TASKS):

    generate videos ─▶ sact extract (a small random-init timm backbone)
        ─▶ sact sweep over the task's store: every variant of VARIANTS, once per training seed,
           each run trained and scored on identical test episodes (fewshot/sweep.py; its runs in
           <task>/runs/<variant>-seed<k>/, its cost table printed first)
        ─▶ sact report's numbers (mean over seeds, spread between seeds, paired differences to
           SA-CT) beside the ranking the task's structure predicts (TASKS_PREDICTED, written before
           the first run)

Every stage is the library's own entry point, called as the command line calls it, and every stage
resumes: run the same command again after a kill and finished work is skipped (the sweep's own
resume). A task folder written by the demo before it was a sweep (runs/<variant>/seed<k>/) is
refused in one line rather than mixed with the sweep's layout.

The defaults were chosen so a task (8 variants, 7 of them trained, one seed each) finishes in a
few minutes on two CPU cores, and all four tasks with three seeds in about an hour (README.md holds
the measured tables): 64-pixel videos and a ViT-Tiny at 64 px (a 4×4 patch grid, D = 192) with
seeded random weights, since a demo cannot download pretrained ones; a small projection width
(d_k = 128) and a higher learning rate with a short warm-up than `sact train`'s defaults, so 200
steps suffice. Every learned variant gets the same steps, learning rate, episodes and seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sact.common.errors import Interrupted, SactError
from sact.common.files import write_text_atomic
from sact.common.progress import progress_display
from sact.demo.config import DemoConfig
from sact.demo.synthetic import TASKS, SyntheticDatasetConfig, make_synthetic_dataset
from sact.explain import explain
from sact.extract.pipeline import ExtractConfig, run_extraction
from sact.fewshot.config import ExplainConfig
from sact.fewshot.report import Report, ReportRow, report_json
from sact.fewshot.sweep import RUNS_FOLDER, plan, run_sweep
from sact.fewshot.sweep_config import VARIANTS, SweepConfig, Variant, variant

RESULTS_FILE = "demo.json"
MARKDOWN_FILE = "demo.md"


class DemoError(SactError):
    """A demo stage that failed; the message is one line for the user."""


@dataclass(frozen=True)
class Prediction:
    """What a task's structure predicts, written down before it was run: tiers of variants, best
    first (variants of one tier are expected within each other's confidence intervals)."""

    tiers: tuple[tuple[str, ...], ...]
    why: str

    def tier(self, variant: str) -> int:
        return next(number for number, tier in enumerate(self.tiers) if variant in tier)


TASKS_PREDICTED = {
    "appearance": Prediction(
        tiers=(
            ("sact", "sact-no-tmixer", "sact-no-cpe", "protonet", "trx-grid"),
            ("sact-paper-formula", "trx"),
            ("nearest-mean",),
        ),
        why="the class is what the object looks like, wherever it is and however it moves: every "
        "head that can single out the object's patches before pooling does well, and SA-CT must "
        "not lose to them. TRX sees only the patch mean, where the object is 1/16 of the frame; "
        "the raw mean is dominated by the random background. At the paper formula SA-CT starts "
        "from flat logits and spends much of the 200 steps getting out of them.",
    ),
    "order": Prediction(
        tiers=(
            ("sact", "sact-no-cpe", "trx", "trx-grid"),
            ("sact-no-tmixer", "sact-paper-formula"),
            ("protonet", "nearest-mean"),
        ),
        why="every class shows the same four colours for as long, only their order differs: "
        "anything that averages over time is at chance (ProtoNet, nearest mean). The TMixer "
        "mixes frames in order and TRX compares ordered frame tuples. Without the TMixer, "
        "SA-CT sums the values over frames before the distance, so only its frame-aligned "
        "attention can tell orders apart; at the paper formula it starts from flat logits.",
    ),
    "motion": Prediction(
        tiers=(
            ("sact", "sact-no-cpe"),
            ("trx-grid", "sact-paper-formula"),
            ("sact-no-tmixer", "trx"),
            ("protonet", "nearest-mean"),
        ),
        why="the class is only the motion, at a random place: SA-CT aligns patches across "
        "videos by attention; TRX-grid keeps a coarse layout of each frame; the faithful TRX's "
        "patch mean keeps almost nothing of where the object is (an information limit of the "
        "pooling); without the TMixer SA-CT loses the order of frames in its values. Pooling over "
        "time erases the order of the motion: ProtoNet and the nearest mean near chance. At the "
        "paper formula SA-CT learns the same model from flat logits, slower (val 32% against "
        "56% after 300 steps in one earlier run).",
    ),
    "clutter": Prediction(
        tiers=(
            ("sact", "sact-no-tmixer", "sact-no-cpe"),
            ("sact-paper-formula", "protonet", "trx", "trx-grid"),
            ("nearest-mean",),
        ),
        why="the class object moves among three others whose identities are those of other "
        "classes: matching patches finds the one object a query shares with a class's support "
        "videos, while pooling mixes it with three random identities (worst at 1 shot); the "
        "paper formula starts from flat logits.",
    ),
}


@dataclass(frozen=True)
class TaskResult:
    """One task's run of the suite: its store, report against the prediction, figures, times."""

    task: str
    dataset: Path
    store: str
    report: Report
    ranking: Ranking
    figures: dict[str, str]
    seconds: dict[str, float]  # by stage

    def to_json(self) -> dict[str, Any]:
        """What demo.json holds of the task."""
        prediction = TASKS_PREDICTED[self.task]
        return {
            "dataset": str(self.dataset),
            "store": self.store,
            "predicted": {
                "tiers": [list(tier) for tier in prediction.tiers],
                "why": prediction.why,
            },
            "report": report_json(self.report),
            "measured": asdict(self.ranking),
            "figures": self.figures,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class DemoResult:
    results: dict[str, Any]  # what demo.json holds
    tables: list[Table]
    markdown: str
    path: Path
    markdown_path: Path


def _stage(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def task_names(config: DemoConfig) -> tuple[str, ...]:
    if config.task == "all":
        return tuple(TASKS)
    if config.task not in TASKS:
        raise DemoError(f"--task must be all or one of {', '.join(TASKS)}, got {config.task!r}")
    return (config.task,)


def generate(config: DemoConfig, task: str, folder: Path, console: Console) -> Path:
    """The task's synthetic dataset under folder/dataset; videos already written are kept."""
    dataset_config = SyntheticDatasetConfig(
        root=folder / "dataset",
        videos_per_class=config.videos_per_class,
        frames=config.video_frames,
        size=config.video_size,
        suffix=config.video_suffix,
        seed=config.seed,
        task=task,
    )
    total = len(TASKS[task]) * config.videos_per_class
    with progress_display(console, label="generate", transient=False) as progress:
        bar = progress.add_task("videos", total=total)
        make_synthetic_dataset(dataset_config, on_video=lambda _: progress.advance(bar))
    return dataset_config.root


def extract_config(config: DemoConfig, dataset: Path, store: str, **options: Any) -> ExtractConfig:
    """The demo's extraction of `dataset` into `store` (feature set "demo"), with `options` of
    ExtractConfig added (bench/views.py adds random views)."""
    return ExtractConfig(
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
        **options,
    )


def extract(config: DemoConfig, dataset: Path, folder: Path, console: Console) -> str:
    store = str(folder / "feats.zarr")
    summary = run_extraction(extract_config(config, dataset, store), console=console)
    if summary.failed or summary.pending:
        raise DemoError(
            f"extraction left {summary.failed} failed and {summary.pending} pending videos; "
            "run the demo again to retry them"
        )
    return store


def sweep_config(config: DemoConfig, dataset: Path, store: str, folder: Path) -> SweepConfig:
    """The task's sweep: every variant of VARIANTS on the task's store and split, with the demo's
    seeds (config.seed, config.seed + 1, ...; the nearest mean once), budget and scoring, its
    runs and test episodes under `folder`."""
    return SweepConfig(
        feats=store,
        split=str(dataset),
        variants=tuple(one.name for one in VARIANTS),
        seeds=config.seeds,
        seed=config.seed,
        shots=config.evaluation.shots,
        out=str(folder),
        device=config.device,
        training=config.training,
        evaluation=config.evaluation,
    )


def refuse_the_old_layout(folder: Path) -> None:
    """A task folder of the demo before it was a sweep holds runs/<variant>/seed<k>/: refused
    rather than trained again beside it in the sweep's runs/<variant>-seed<k>/."""
    old = [one.name for one in VARIANTS if (folder / RUNS_FOLDER / one.name).is_dir()]
    if old:
        raise DemoError(
            f"{folder / RUNS_FOLDER / old[0]} is a run of an older sact demo "
            "(runs/<variant>/seed<k>/); move it away or give the demo another --out"
        )


def sweep_task(config: SweepConfig, console: Console) -> Report:
    """Train and score every run of the task's sweep (what is done is kept); its report."""
    try:
        result = run_sweep(config, console=console)
    except Interrupted as interrupted:  # the demo continues the sweep itself
        raise Interrupted(
            interrupted.what, "run the same sact demo command again to continue"
        ) from interrupted
    if result is None:  # a torchrun rank other than 0: the demo runs in one process
        raise DemoError("sact demo runs in one process, not under torchrun")
    return result.report


def variant_of(row: ReportRow) -> Variant:
    """The variant whose runs a report row holds (the sweep names each run's folder
    <variant>-seed<k>)."""
    return variant(Path(row.runs[0]).name.rsplit("-seed", 1)[0])


@dataclass(frozen=True)
class Disagreement:
    """A variant predicted in a better tier that measured significantly worse than another."""

    predicted_better: str
    measured_better: str
    difference: float  # predicted_better − measured_better, paired over the test episodes
    ci95: float


@dataclass(frozen=True)
class Ranking:
    ranks: dict[str, int]  # by variant name, 1 the best
    disagreements: list[Disagreement]


def compare_to_prediction(report: Report, task: str) -> Ranking:
    """Measured ranks (by the last shot setting's accuracy) and the pairs the prediction got
    wrong: a variant predicted in a better tier that measured significantly worse."""
    prediction = TASKS_PREDICTED[task]
    names = [variant_of(row).name for row in report.rows]
    last = len(report.settings) - 1
    accuracy = [row.scores[last].accuracy for row in report.rows]
    order = sorted(range(len(names)), key=lambda number: -accuracy[number])
    ranks = {names[number]: rank + 1 for rank, number in enumerate(order)}
    disagreements = []
    for a, first in enumerate(names):
        for b, second in enumerate(names):
            if prediction.tier(first) >= prediction.tier(second):
                continue
            difference, interval = report.paired(a, b, last)
            if difference < -interval:
                disagreements.append(Disagreement(first, second, difference, interval))
    return Ranking(ranks, disagreements)


def task_table(task: str, report: Report, ranking: Ranking) -> Table:
    way = report.settings[0].way
    table = Table(
        title=f"sact demo --task {task}: {way}-way accuracy on unseen test classes "
        f"(%, mean over seeds ± 95% CI), chance {100 / way:.0f}%"
    )
    for column in ("variant", "predicted tier", "seeds"):
        table.add_column(column)
    for s in report.settings:
        table.add_column(f"{s.shot}-shot", justify="right")
        table.add_column("seed range", justify="right")
        table.add_column("Δ vs sact default", justify="right")
    table.add_column("measured rank", justify="right")
    prediction = TASKS_PREDICTED[task]
    for number, row in enumerate(report.rows):
        variant = variant_of(row)
        cells = [variant.label, str(prediction.tier(variant.name) + 1), str(len(row.seeds))]
        for score in row.scores:
            cells += score.cells(reference=number == 0)
        cells.append(str(ranking.ranks[variant.name]))
        table.add_row(*cells)
    return table


def task_markdown(task: str, report: Report, ranking: Ranking) -> str:
    """The task's table for README.md and bench/RESULTS.md."""
    table = task_table(task, report, ranking)
    columns = [str(column.header) for column in table.columns]
    lines = [
        f"**{task}** ({TASKS_PREDICTED[task].why})",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" if n < 3 else "---:" for n in range(len(columns))) + " |",
    ]
    rows = zip(*(column.cells for column in table.columns), strict=True)
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    if ranking.disagreements:
        wrong = "; ".join(
            f"{d.measured_better} above {d.predicted_better} "
            f"({100 * d.difference:+.1f} ± {100 * d.ci95:.1f})"
            for d in ranking.disagreements
        )
        lines += ["", f"Measured against the prediction: {wrong}."]
    else:
        lines += ["", "No variant measured significantly below one predicted in a lower tier."]
    return "\n".join(lines) + "\n"


def pick_explained_pair(dataset: Path) -> tuple[str, str]:
    """A query and a support video of the same test class: the first two of the test list."""
    first, second = (dataset / "testlist.txt").read_text(encoding="utf-8").splitlines()[:2]
    return first.split("/", 1)[1], second.split("/", 1)[1]


def run_task(config: DemoConfig, task: str, console: Console) -> TaskResult:
    folder = config.out / task
    refuse_the_old_layout(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    _stage(console, f"{task} 1/5 generate the task's few-shot dataset")
    dataset = generate(config, task, folder, console)
    seconds["generate"] = time.perf_counter() - started

    _stage(
        console, f"{task} 2/5 extract features ({config.backbone}, random init, {config.size} px)"
    )
    mark = time.perf_counter()
    store = extract(config, dataset, folder, console)
    seconds["extract"] = time.perf_counter() - mark

    _stage(
        console,
        f"{task} 3/5 sweep: train {len(VARIANTS)} variants × {config.seeds} seed(s), score each "
        "on identical test episodes",
    )
    mark = time.perf_counter()
    sweep = sweep_config(config, dataset, store, folder)
    report = sweep_task(sweep, console)
    seconds["sweep"] = time.perf_counter() - mark

    _stage(console, f"{task} 4/5 compare with the predicted ranking")
    ranking = compare_to_prediction(report, task)
    runs = plan(sweep)

    _stage(console, f"{task} 5/5 draw SA-CT's attention")
    mark = time.perf_counter()
    query, support = pick_explained_pair(dataset)
    attention_png = explain(
        ExplainConfig(
            run=runs[0].folder,  # the sweep's first: SA-CT, the first seed
            query=query,
            support=support,
            out=folder / "attention.png",
        )
    )
    seconds["explain"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return TaskResult(
        task=task,
        dataset=dataset,
        store=store,
        report=report,
        ranking=ranking,
        figures={
            "attention": str(attention_png),
            **{
                f"training_curve_{run.variant.name}": str(run.folder / "training_curve.png")
                for run in runs
                if run.seed == config.seed
            },
        },
        seconds={stage: round(value, 1) for stage, value in seconds.items()},
    )


def run_demo(config: DemoConfig, console: Console | None = None) -> DemoResult:
    """Every asked task: generate, extract, sweep every variant per seed, report."""
    console = console or Console(stderr=True)
    if config.seeds < 1:
        raise DemoError(f"--seeds must be at least 1, got {config.seeds}")
    tasks = task_names(config)
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    outcomes = [run_task(config, task, console) for task in tasks]
    results: dict[str, Any] = {
        "config": config.to_json(),
        "tasks": {outcome.task: outcome.to_json() for outcome in outcomes},
        "seconds": round(time.perf_counter() - started, 1),
    }
    tables = [task_table(o.task, o.report, o.ranking) for o in outcomes]
    markdown = [task_markdown(o.task, o.report, o.ranking) for o in outcomes]
    path = config.out / RESULTS_FILE
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    markdown_path = config.out / MARKDOWN_FILE
    write_text_atomic(markdown_path, "\n".join(markdown))
    return DemoResult(results, tables, "\n".join(markdown), path, markdown_path)
