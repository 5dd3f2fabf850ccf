"""The `sact` command line: parses options and calls the library, nothing more.

Every option's default is read from its command's config dataclass (`sact.extract.config`,
`sact.fewshot.config`, `sact.demo.config`), so each default is written once. Those modules import
nothing heavy, and a command imports torch and timm only once its options are checked, so a
mistake is reported in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from sact import __version__
from sact.common.errors import SactError
from sact.demo.config import DemoConfig
from sact.extract.config import ExtractConfig
from sact.fewshot.config import EvalConfig, ExplainConfig, TrainConfig
from sact.fewshot.kinds import kinds_by_option, model_names, one_of

stderr = Console(stderr=True)


def fail(message: str, *, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_table(console: Console, table: Table) -> None:
    """A table at its full width where no terminal limits it (a log file, CI), instead of rich's
    default of 80 columns, which cuts headers and wraps cells."""
    if not console.is_terminal:
        natural = Measurement.get(console, console.options.update_width(sys.maxsize), table)
        console = Console(file=console.file, width=max(console.width, natural.maximum))
    console.print(table)


def warn(message: str) -> None:
    stderr.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into one line on stderr and exit status 2."""
    try:
        yield
    except SactError as error:
        fail(str(error))
    except KeyboardInterrupt:
        stderr.print("interrupted; run the same command again to resume")
        sys.exit(130)


# click's UsageError, as typer raises it (recent typers raise it from their own copy of click)
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


@contextmanager
def usage_errors() -> Iterator[None]:
    """A bad option value or an unknown option or command, as one line like every other error."""
    try:
        yield
    except UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            raise  # `sact` alone: typer prints the help
        message = error.format_message()  # type: ignore[attr-defined, unused-ignore]
        context = error.ctx  # type: ignore[attr-defined, unused-ignore]
        hint = f" (see {context.command_path} --help)" if context else ""
        fail(message[:1].lower() + message[1:].rstrip(".") + hint)


class OneLineUsageErrors(TyperGroup):
    """typer's group, reporting usage errors with `fail` instead of a usage box."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with usage_errors():  # the group's own options: `sact --bogus`
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with usage_errors():  # the command's name and options: `sact trian`, `sact train --lr x`
            return super().invoke(ctx)


app = typer.Typer(
    name="sact",
    cls=OneLineUsageErrors,
    help="SA-CT few-shot action recognition on a cached feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def defaults(config: type) -> Any:
    """A config dataclass's defaults as attributes: the options below take theirs from here."""
    values = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        values[field.name] = list(value) if isinstance(value, tuple) else value  # repeatable
    return SimpleNamespace(**values)


EXTRACT, TRAIN, EVAL = defaults(ExtractConfig), defaults(TrainConfig), defaults(EvalConfig)
DEMO, EXPLAIN = defaults(DemoConfig), defaults(ExplainConfig)


def parameter_given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def examples(*commands: str) -> str:
    """The end of a command's --help: real command lines."""
    return "Examples:\n\n" + "\n".join(commands)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"sact {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """SA-CT few-shot action recognition on a cached feature store."""


# ---- commands (each section owned by the module it calls) ----


# -- extract (extract/pipeline.py) --


@app.command(
    epilog=examples(
        "sact extract --videos /data/ssv2/videos --split ssv2_OTAM --out feats.zarr",
        "sact extract --videos hmdb51/ --out feats.zarr --random-views 4",
        "torchrun --nproc-per-node 8 $(which sact) extract --videos v/ --out f.zarr",
    )
)
def extract(
    videos: Annotated[
        Path | None,
        typer.Option(
            help="Folder of videos (flat or class folders) or class/video/ frame folders."
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Feature store (.zarr path or URL).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Only this split's videos: a built-in name or a folder.")
    ] = EXTRACT.split,
    backbone: Annotated[str, typer.Option(help="Any timm model name.")] = EXTRACT.backbone,
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file (.safetensors or .pth).")
    ] = EXTRACT.weights,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Seeded random weights (tests, demos).")
    ] = EXTRACT.random_init,
    frames: Annotated[int, typer.Option(help="Frames per video, T.")] = EXTRACT.frames,
    size: Annotated[int | None, typer.Option(help="Crop size; default: the backbone's.")] = (
        EXTRACT.size
    ),
    grid: Annotated[int | None, typer.Option(help="Pool the patch grid to H×H.")] = EXTRACT.grid,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = EXTRACT.device,
    batch_size: Annotated[int, typer.Option(help="Videos per forward pass.")] = EXTRACT.batch_size,
    workers: Annotated[
        int, typer.Option(help="Decoding processes (0: none); default: CPU cores - 1, up to 8.")
    ] = EXTRACT.workers,
    name: Annotated[str | None, typer.Option(help="Feature set name; default from config.")] = (
        EXTRACT.name
    ),
    shard_size: Annotated[int, typer.Option(help="Videos per shard (unit of resume).")] = (
        EXTRACT.shard_size
    ),
    view: Annotated[
        list[str] | None,
        typer.Option(
            help="An augmented view besides the canonical one (repeatable): parts joined by _ "
            "from jitter, crop-{tl,tr,bl,br,random}, flip, d<k>; e.g. jitter_crop-random_d0."
        ),
    ] = None,
    random_views: Annotated[
        int, typer.Option(help="Add K views of jittered frames and random crops (no flip).")
    ] = EXTRACT.random_views,
    allow_flip: Annotated[
        bool,
        typer.Option("--allow-flip", help="Extract flipped views even on an SSv2 split."),
    ] = EXTRACT.allow_flip,
    json_out: Annotated[
        bool, typer.Option("--json", help="Also print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Extract frozen-backbone patch features of every video into a resumable feature store."""

    if videos is None:
        fail("missing --videos DIR (the folder of videos to extract)")
    if out is None:
        fail("missing --out STORE (where to write the features, e.g. feats.zarr)")
    config = ExtractConfig(
        videos=videos,
        out=out,
        split=split,
        backbone=backbone,
        weights=weights,
        random_init=random_init,
        frames=frames,
        size=size,
        grid=grid,
        device=device,
        batch_size=batch_size,
        workers=workers,
        name=name,
        shard_size=shard_size,
        views=tuple(view or ()),
        random_views=random_views,
        allow_flip=allow_flip,
    )
    with user_errors():
        config.check()  # before torch is imported: a mistake is refused at once
    from sact.extract.claims import process_start_time
    from sact.extract.distributed import rank_from_env
    from sact.extract.pipeline import run_extraction
    from sact.extract.tables import cost_table, failures_table, summary_table, views_table

    with user_errors():
        summary = run_extraction(
            config,
            console=stderr,
            on_plan=lambda costs: print_table(stderr, cost_table(costs)),
            run_started=process_start_time(),  # a command started alongside another is one
        )
    if not rank_from_env().is_main:  # under torchrun, rank 0 alone reports the store-wide summary
        raise typer.Exit(1 if summary.failed else 0)
    if summary.unmatched:
        stderr.print(
            f"[yellow]{len(summary.unmatched)} split lines name no file[/], e.g. "
            + ", ".join(repr(line) for line in summary.unmatched[:3]),
            highlight=False,
        )
    if summary.unlisted:
        stderr.print(
            f"[yellow]{summary.unlisted} videos in the folder are in no list of the split[/] "
            "(not extracted)",
            highlight=False,
        )
    if summary.unnamable:
        from sact.extract.videos import NOT_UTF8

        stderr.print(
            f"[yellow]{len(summary.unnamable)} files skipped[/]: {NOT_UTF8}; e.g. "
            + ", ".join(summary.unnamable[:3]),
            highlight=False,
        )
    print_table(stderr, summary_table(summary))
    if len(summary.views) > 1:
        print_table(stderr, views_table(summary))
    if summary.failures:
        print_table(stderr, failures_table(summary))
    if json_out:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    if summary.failed:
        raise typer.Exit(1)


# -- info (store/inventory.py) --


@app.command(
    epilog=examples(
        "sact info feats.zarr",
        "sact info s3://lab-feats/ssv2.zarr --json",
        "sact info feats.zarr --verify",
    )
)
def info(
    store: Annotated[str, typer.Argument(help="Feature store (.zarr path or URL).")],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read every chunk: list damaged videos and mark them for `sact extract` to redo.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a store's feature sets: provenance, done / failed / pending, size on disk."""
    from sact.store.inventory import inventory
    from sact.store.tables import damaged_table, inventory_tables
    from sact.store.verify import verify_and_mark

    with user_errors():
        # verify first: marking rewrites a damaged done or error chunk, which inventory reads
        report = verify_and_mark(store, console=stderr) if verify else None
        found = inventory(store)
    if json_out:
        verified = {} if report is None else {"verify": report.to_json()}
        typer.echo(json.dumps({**found.to_json(), **verified}, indent=2))
    else:
        console = Console()
        for table in inventory_tables(found):
            print_table(console, table)
        if report is not None:
            if report.damaged:
                print_table(console, damaged_table(report))
            else:
                console.print(report.notes()[-1])
    if report is not None:
        for note in report.notes():
            stderr.print(note, highlight=False)
        if report.damaged:
            raise typer.Exit(1)


# -- export (store/hdf5.py) --


@app.command(
    epilog=examples(
        "sact export feats.zarr --to feats.h5",
        "sact export feats.zarr --to r50.h5 --feature-set resnet50.tv_in1k-224px-8f",
    )
)
def export(
    store: Annotated[str, typer.Argument(help="Feature store (.zarr path or URL).")],
    to: Annotated[Path | None, typer.Option("--to", help="HDF5 file to write (.h5).")] = None,
    feature_set: Annotated[
        list[str] | None, typer.Option(help="Only this feature set (repeatable); default: all.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Also print JSON on stdout.")] = False,
) -> None:
    """Copy a store's feature sets into one HDF5 file (same arrays and attributes)."""
    from sact.store.hdf5 import export_hdf5
    from sact.store.tables import export_table

    if to is None:
        fail("missing --to FILE.h5 (the HDF5 file to write)")
    with user_errors():
        summary = export_hdf5(
            store, to, feature_sets=feature_set or None, overwrite=overwrite, console=stderr
        )
    print_table(stderr, export_table(summary))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))


# -- train, evaluate (fewshot/training.py, fewshot/evaluation.py) --


@app.command(
    epilog=examples(
        "sact train --feats feats.zarr --model sact --out runs/sact-r50",
        "sact train --feats feats.zarr --model trx --shot 1 --out runs/trx-1shot",
        "sact train --out runs/sact-r50 --resume",
    )
)
def train(
    ctx: typer.Context,
    feats: Annotated[str | None, typer.Option(help="Feature store (.zarr path or URL).")] = None,
    feature_set: Annotated[
        str | None, typer.Option(help="Feature set in the store; needed if it holds several.")
    ] = TRAIN.feature_set,
    split: Annotated[
        str | None,
        typer.Option(help="Split list: a built-in name or a folder; default: the store's split."),
    ] = TRAIN.split,
    model: Annotated[str, typer.Option(help=f"{one_of(model_names())}.")] = TRAIN.model,
    way: Annotated[int, typer.Option(help="Classes per episode, N.")] = TRAIN.way,
    shot: Annotated[int, typer.Option(help="Support videos per class, K.")] = TRAIN.shot,
    query: Annotated[int, typer.Option(help="Query videos per class, Q.")] = TRAIN.query,
    frames: Annotated[
        int | None, typer.Option(help="Frames the model sees; default: all stored frames.")
    ] = TRAIN.frames,
    d_k: Annotated[
        int | None,
        typer.Option(help=f"Projection width d_k ({', '.join(kinds_by_option()['d_k'])})."),
    ] = TRAIN.d_k,
    tmixer: Annotated[
        bool, typer.Option(help="SA-CT's TMixer (ablation: --no-tmixer).")
    ] = TRAIN.tmixer,
    cpe: Annotated[bool, typer.Option(help="SA-CT's CPE (ablation: --no-cpe).")] = TRAIN.cpe,
    input_norm: Annotated[
        bool, typer.Option(help="SA-CT: LayerNorm on the input features (seed: --no-input-norm).")
    ] = TRAIN.input_norm,
    distance: Annotated[
        str, typer.Option(help="SA-CT's distance of frame sums (sum), means (mean) or the seed's.")
    ] = TRAIN.distance,
    iterations: Annotated[int, typer.Option(help="Optimiser steps.")] = TRAIN.iterations,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = TRAIN.lr,
    optimizer: Annotated[str, typer.Option(help="adamw, adam or sgd.")] = TRAIN.optimizer,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = TRAIN.weight_decay,
    warmup: Annotated[
        int, typer.Option(help="Linear warm-up steps, then cosine decay to zero.")
    ] = TRAIN.warmup,
    tasks_per_batch: Annotated[int, typer.Option(help="Episodes per optimiser step.")] = (
        TRAIN.tasks_per_batch
    ),
    val_every: Annotated[int, typer.Option(help="Validate and checkpoint every N steps.")] = (
        TRAIN.val_every
    ),
    val_episodes: Annotated[int, typer.Option(help="Fixed val episodes per validation.")] = (
        TRAIN.val_episodes
    ),
    out: Annotated[str | None, typer.Option(help="Run directory; default runs/NAME.")] = TRAIN.out,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = TRAIN.seed,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = TRAIN.device,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = TRAIN.resume,
    cache_gb: Annotated[
        float | None,
        typer.Option(
            help="Cache at most this many GB of the split's features, on the GPU first, then "
            "in host memory; the rest is read from the store. Default: 75% of the GPU's free "
            "memory, then half of the host's available memory."
        ),
    ] = TRAIN.cache_gb,
    log: Annotated[
        str | None,
        typer.Option(
            help="tensorboard: also TensorBoard event files in the run (metrics.jsonl "
            "is always written)."
        ),
    ] = TRAIN.log,
    views: Annotated[
        str,
        typer.Option(
            help="Stored views to draw one of per video per episode: all (those holding the "
            "whole train split) or names joined by commas, e.g. canonical."
        ),
    ] = TRAIN.views,
    rerun: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A run's config.json: train again with its settings; options given override.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a few-shot head on cached features (episodic; resumable, bitwise on a CPU)."""
    from dataclasses import asdict

    from sact.fewshot.config import config_to_rerun

    if feats is None and not resume and rerun is None:
        fail("missing --feats STORE (the feature store written by `sact extract`)")
    config = TrainConfig(
        feats=feats or "",
        feature_set=feature_set,
        split=split,
        model=model,
        way=way,
        shot=shot,
        query=query,
        frames=frames,
        d_k=d_k,
        tmixer=tmixer,
        cpe=cpe,
        input_norm=input_norm,
        distance=distance,
        iterations=iterations,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        warmup=warmup,
        tasks_per_batch=tasks_per_batch,
        val_every=val_every,
        val_episodes=val_episodes,
        out=out,
        seed=seed,
        device=device,
        resume=resume,
        cache_gb=cache_gb,
        log=log,
        views=views,
    )
    if rerun is not None:
        given = [name for name in ctx.params if parameter_given(ctx, name)]
        with user_errors():
            config = config_to_rerun(rerun, config, options=given)
    with user_errors():
        config.check()  # before torch is imported: a mistake is refused at once
    from sact.fewshot.training import train as run_training

    with user_errors():
        result = run_training(config, console=stderr)
    trained = (
        f"{result.steps} steps; best val accuracy {100 * result.best_val_accuracy:.2f}% at step "
        f"{result.best_step}; {result.data}"
        if result.parameters
        else f"nothing to train; val accuracy {100 * result.best_val_accuracy:.2f}%"
    )
    stderr.print(f"{trained}; run in {result.run_dir}", highlight=False)
    if json_out:
        typer.echo(json.dumps({**asdict(result), "run_dir": str(result.run_dir)}, indent=2))


@app.command(
    epilog=examples(
        "sact evaluate --run runs/sact",
        "sact evaluate --run runs/sact --compare runs/trx --episodes-file test.json",
        "sact evaluate --run runs/sact --shot 1 --episodes 1000 --json",
    )
)
def evaluate(
    ctx: typer.Context,
    run: Annotated[
        Path | None, typer.Option(help="Run directory; default: the latest run under runs/.")
    ] = EVAL.run,
    ckpt: Annotated[
        Path | None, typer.Option(help="A checkpoint folder instead of a run.")
    ] = EVAL.ckpt,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint of a run: best or last.")] = (
        EVAL.checkpoint
    ),
    feats: Annotated[
        str | None, typer.Option(help="Feature store; default: the run's own.")
    ] = EVAL.feats,
    feature_set: Annotated[
        str | None, typer.Option(help="Feature set; default: the run's own.")
    ] = EVAL.feature_set,
    split: Annotated[str, typer.Option(help="Split part to score: train, val or test.")] = (
        EVAL.split
    ),
    split_list: Annotated[
        str | None, typer.Option(help="Split list name or folder; default: the run's split.")
    ] = EVAL.split_list,
    way: Annotated[int, typer.Option(help="Classes per episode, N.")] = EVAL.way,
    shot: Annotated[list[int], typer.Option(help="Shots K (repeatable).")] = EVAL.shots,
    query: Annotated[int, typer.Option(help="Queries per class, Q.")] = EVAL.query,
    episodes: Annotated[int, typer.Option(help="Episodes per shot setting.")] = EVAL.episodes,
    seed: Annotated[int, typer.Option(help="Seed of the episodes.")] = EVAL.seed,
    episodes_file: Annotated[
        Path | None, typer.Option(help="Episode file: read if it exists, else written.")
    ] = EVAL.episodes_file,
    compare: Annotated[
        list[Path],
        typer.Option(help="Another run scored on the same episodes (repeatable): paired Δ."),
    ] = EVAL.compare,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = EVAL.device,
    batch_size: Annotated[int, typer.Option(help="Videos per embedding forward.")] = (
        EVAL.batch_size
    ),
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Also score with logits averaged over every stored view (test-time "
            "augmentation), reported apart.",
        ),
    ] = EVAL.tta,
    out: Annotated[
        Path | None,
        typer.Option(help="Also write the results here (every run keeps its own: evaluations/)."),
    ] = EVAL.out,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Few-shot accuracy ± 95% CI on the test split; paired differences with --compare."""

    config = EvalConfig(
        run=None if run is None else str(run),
        ckpt=None if ckpt is None else str(ckpt),
        checkpoint=checkpoint,
        feats=feats,
        feature_set=feature_set,
        split=split,
        split_list=split_list,
        way=way,
        shots=tuple(shot),
        query=query,
        episodes=episodes,
        seed=seed,
        episodes_file=None if episodes_file is None else str(episodes_file),
        compare=tuple(str(path) for path in compare),
        device=device,
        batch_size=batch_size,
        out=None if out is None else str(out),
        tta=tta,
    )
    with user_errors():
        config.check()  # before torch is imported: a mistake is refused at once
    from sact.fewshot.evaluation import evaluate as run_evaluation
    from sact.fewshot.evaluation import results_table

    ignored = [
        f"--{name}"
        for name in ("way", "shot", "query", "episodes", "seed")
        if parameter_given(ctx, name)
    ]
    if episodes_file is not None and episodes_file.exists() and ignored:
        warn(f"{', '.join(ignored)} ignored: the episodes, with their way, shot and query, come "
             f"from {episodes_file}")  # fmt: skip
    with user_errors():
        results = run_evaluation(config, console=stderr)
    print_table(stderr if json_out else Console(), results_table(results))
    stderr.print(f"results in {results['path']}", highlight=False)
    if json_out:
        typer.echo(json.dumps(results, indent=2))


# -- report (fewshot/report.py) --


@app.command(
    epilog=examples(
        "sact report runs/sact runs/trx runs/protonet",
        "sact report sact-demo/motion/runs --markdown results.md --json",
    )
)
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories, or folders searched for runs.")
    ],
    markdown: Annotated[
        Path | None, typer.Option(help="Also write the table as markdown to this file.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """One table over many runs: mean and spread over seeds, paired differences on same episodes."""
    from sact.common.files import write_text_atomic
    from sact.fewshot.report import build_report, report_json, report_markdown, report_table

    with user_errors():
        data = report_json(build_report(runs))
    print_table(stderr if json_out else Console(), report_table(data))
    if markdown is not None:
        write_text_atomic(markdown, report_markdown(data))
        stderr.print(f"markdown in {markdown}", highlight=False)
    if json_out:
        typer.echo(json.dumps(data, indent=2))


# -- demo, explain (demo.py, explain.py) --


@app.command(
    epilog=examples(
        "sact demo",
        "sact demo --task order --out /tmp/sact-demo",
        "sact demo --task all --seeds 3",
    )
)
def demo(
    out: Annotated[Path, typer.Option(help="Folder for dataset, store, runs, plots.")] = DEMO.out,
    task: Annotated[
        str, typer.Option(help="appearance, order, motion, clutter, or all of them.")
    ] = DEMO.task,
    seeds: Annotated[int, typer.Option(help="Training seeds per model variant.")] = DEMO.seeds,
    seed: Annotated[int, typer.Option(help="Seed of the dataset, weights and episodes.")] = (
        DEMO.seed
    ),
    json_out: Annotated[bool, typer.Option("--json", help="Print demo.json on stdout.")] = False,
) -> None:
    """Synthetic tasks with known answers: every model variant, seeds, predicted vs measured."""
    from sact.demo.run import run_demo

    with user_errors():
        result = run_demo(DemoConfig(out=out, task=task, seeds=seeds, seed=seed), console=stderr)
    for table in result.tables:
        print_table(stderr if json_out else Console(), table)
    stderr.print(f"results in {result.path} and {result.markdown_path}", highlight=False)
    stderr.print(f"{result.results['seconds']:.0f} s in all", highlight=False)
    if json_out:
        typer.echo(json.dumps(result.results, indent=2))


@app.command(
    epilog=examples(
        "sact explain --run runs/sact --query 195025 --support 19977",
        "sact explain --run runs/sact --query 195025 --support 19977 --patches 4",
    )
)
def explain(
    run: Annotated[Path | None, typer.Option(help="A SA-CT run directory.")] = None,
    query: Annotated[str | None, typer.Option(help="Query video id (in the run's store).")] = None,
    support: Annotated[str | None, typer.Option(help="Support video id.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG to write; default: in the run.")
    ] = EXPLAIN.out,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best or last.")] = (
        EXPLAIN.checkpoint
    ),
    patches: Annotated[int, typer.Option(help="Query patches drawn per frame (1-4).")] = (
        EXPLAIN.patches
    ),
    feats: Annotated[
        str | None, typer.Option(help="Feature store; default: the run's.")
    ] = EXPLAIN.feats,
) -> None:
    """Draw SA-CT's cross-attention, frame by frame, from a query video onto a support video."""
    from sact.explain import explain as draw

    if run is None or query is None or support is None:
        fail("sact explain needs --run DIR, --query VIDEO_ID and --support VIDEO_ID")
    if not 1 <= patches <= 4:
        fail(f"--patches must lie in 1..4, got {patches}")
    with user_errors():
        path = draw(ExplainConfig(run=run, query=query, support=support, out=out,
                                  checkpoint=checkpoint, patches=patches, feats=feats))  # fmt: skip
    stderr.print(f"attention figure in {path}", highlight=False)


if __name__ == "__main__":
    app()
