"""The `sact` command line: parses options and calls the library, nothing more.

A command's options are the fields of its config dataclass (`sact.extract.config`,
`sact.fewshot.config`, `sact.demo.config`) declared with `option` (sact.common.options): each
option's name, type, default and help are written once, on its field, and `with_options` builds
the command's signature (which typer reads) from them. Those modules import nothing heavy, and a
command imports torch and timm only once its config is checked, so a mistake is reported in a
fraction of a second.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, get_args, get_origin, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from sact import __version__
from sact.common.errors import Interrupted, SactError
from sact.common.options import checked, declared_options, default_of, option_name
from sact.common.words import agreeing, counted
from sact.demo.config import DemoConfig
from sact.extract.config import ExtractConfig
from sact.fewshot.config import EvalConfig, ExplainConfig, TrainConfig, prepare_training
from sact.fewshot.sweep_config import SweepConfig

stderr = Console(stderr=True)
INTERRUPTED_STATUS = 130  # the shell's exit status for a command stopped by SIGINT


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
    except Interrupted as interrupted:  # what was under way is saved: not an error
        stderr.print(escape(str(interrupted)), highlight=False, soft_wrap=True)
        sys.exit(INTERRUPTED_STATUS)
    except SactError as error:
        fail(str(error))
    except KeyboardInterrupt:
        stderr.print("interrupted; run the same command again to resume")
        sys.exit(INTERRUPTED_STATUS)


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


Command = TypeVar("Command", bound=Callable[..., Any])
Config = TypeVar("Config")


def command_options(config: type) -> list[inspect.Parameter]:
    """A command's options: one per field of `config` declared with `option`, with the field's
    name, type, default and help. A tuple field is a repeatable option; a required field is
    None on the command line until given (`config_from` asks for it by name)."""
    types = get_type_hints(config)
    parameters = []
    for field, spec in declared_options(config):
        kind, default = types[field.name], default_of(field)
        if default is MISSING:
            kind, default = kind | None, None
        elif get_origin(kind) is tuple:
            kind, default = list[get_args(kind)[0]], list(default)  # type: ignore[misc]
        names = (spec.flag,) if spec.flag else ()
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind, typer.Option(*names, help=spec.help)],
                default=default,
            )
        )
    return parameters


def with_options(config: type) -> Callable[[Command], Command]:
    """A command that takes `config`'s options, before its own: typer reads the signature made
    here, and calls the command with every option as a keyword argument (its `**options`)."""

    def decorate(command: Command) -> Command:
        own = [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in inspect.signature(command, eval_str=True).parameters.values()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        signature = inspect.Signature([*command_options(config), *own])
        command.__signature__ = signature  # type: ignore[attr-defined]
        return command

    return decorate


def config_from(config: type[Config], options: dict[str, Any], *, command: str) -> Config:
    """`config` from the values of its options (a repeatable one as a tuple); a required option
    that is missing is refused in one line naming what the command needs."""
    required = {
        field.name: f"{option_name(config, field.name)} {spec.metavar}"
        for field, spec in declared_options(config)
        if default_of(field) is MISSING
    }
    missing = [needed for name, needed in required.items() if options[name] is None]
    if missing:
        *others, last = required.values()
        needs = f"{', '.join(others)} and {last}" if others else last
        fail(f"missing {', '.join(missing)} (sact {command} needs {needs})")
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in options.items()}
    return config(**values)


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
@with_options(ExtractConfig)
def extract(
    json_out: Annotated[
        bool, typer.Option("--json", help="Also print the summary as JSON on stdout.")
    ] = False,
    **options: Any,
) -> None:
    """Extract frozen-backbone patch features of every video into a resumable feature store."""
    with user_errors():  # before torch is imported: a mistake is refused at once
        config = checked(config_from(ExtractConfig, options, command="extract"))
    from sact.common.claims import process_start_time
    from sact.common.distributed import rank_from_env
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
        unmatched = len(summary.unmatched)
        stderr.print(
            f"[yellow]{counted(unmatched, 'split line')} "
            f"{agreeing(unmatched, 'names', 'name')} no file[/], e.g. "
            + ", ".join(repr(line) for line in summary.unmatched[:3]),
            highlight=False,
        )
    if summary.unlisted:
        stderr.print(
            f"[yellow]{counted(summary.unlisted, 'video')} in the folder "
            f"{agreeing(summary.unlisted, 'is', 'are')} in no list of the split[/] (not extracted)",
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
    # the verdict once: after the tables on stdout, or on stderr beside the JSON
    if json_out:
        verified = {} if report is None else {"verify": report.to_json()}
        typer.echo(json.dumps({**found.to_json(), **verified}, indent=2))
        verdict = stderr
    else:
        verdict = Console()
        for table in inventory_tables(found):
            print_table(verdict, table)
        if report is not None and report.damaged:
            print_table(verdict, damaged_table(report))
    if report is not None:
        for note in report.notes():
            verdict.print(note, highlight=False, soft_wrap=True)
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
@with_options(TrainConfig)
def train(
    ctx: typer.Context,
    rerun: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A run's config.json: train again with its settings; options given override.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    **options: Any,
) -> None:
    """Train a few-shot head on cached features (episodic; resumable, bitwise on a CPU)."""
    from dataclasses import asdict

    with user_errors():  # before torch is imported: a mistake is refused at once
        config = prepare_training(
            config_from(TrainConfig, options, command="train"),
            rerun=rerun,
            typed=[name for name in options if parameter_given(ctx, name)],
        )
    from sact.fewshot.training import train as run_training

    with user_errors():
        result = run_training(config, console=stderr)
    trained = (
        f"{result.steps} steps; best val accuracy {100 * result.best_val_accuracy:.2f}% at step "
        f"{result.best_step}"
        if result.parameters
        else f"nothing to train; val accuracy {100 * result.best_val_accuracy:.2f}%"
    )
    # one line each: the features' plan is a sentence of its own, with semicolons inside
    for line in (trained, result.data, f"run in {result.run_dir}"):
        stderr.print(line, highlight=False, soft_wrap=True)
    if json_out:
        typer.echo(json.dumps({**asdict(result), "run_dir": str(result.run_dir)}, indent=2))


@app.command(
    epilog=examples(
        "sact evaluate --run runs/sact",
        "sact evaluate --run runs/sact --compare runs/trx --episodes-file test.json",
        "sact evaluate --run runs/sact --shot 1 --episodes 1000 --json",
    )
)
@with_options(EvalConfig)
def evaluate(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    **options: Any,
) -> None:
    """Few-shot accuracy ± 95% CI on the test split; paired differences with --compare."""
    with user_errors():  # before torch is imported: a mistake is refused at once
        config = checked(config_from(EvalConfig, options, command="evaluate"))
    from sact.fewshot.evaluation import evaluate as run_evaluation
    from sact.fewshot.evaluation import results_table

    # what an existing episode file decides
    ignored = [
        option_name(EvalConfig, name)
        for name in ("way", "shots", "query", "episodes", "seed")
        if parameter_given(ctx, name)
    ]
    episodes_file = config.config.episodes_file
    if episodes_file is not None and Path(episodes_file).exists() and ignored:
        warn(f"{', '.join(ignored)} ignored: the episodes, with their way, shot and query, come "
             f"from {episodes_file}")  # fmt: skip
    with user_errors():
        results = run_evaluation(config, console=stderr)
    print_table(stderr if json_out else Console(), results_table(results))
    stderr.print(f"results in {results.path}", highlight=False)
    if json_out:
        typer.echo(json.dumps({**results.to_json(), "path": results.path}, indent=2))


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
        built = build_report(runs)
        data = report_json(built)  # computes the rows, which can fail
    print_table(stderr if json_out else Console(), report_table(built))
    for warning in built.warnings:
        warn(warning)
    if markdown is not None:
        write_text_atomic(markdown, report_markdown(built))
        stderr.print(f"markdown in {markdown}", highlight=False)
    if json_out:
        typer.echo(json.dumps(data, indent=2))


# -- sweep (fewshot/sweep.py) --


@app.command(
    epilog=examples(
        "sact sweep --recipe ssv2-otam --feats feats.zarr --out sweeps/otam",
        "sact sweep --feats feats.zarr --variants sact,protonet --seeds 2 --steps 2000",
        "torchrun --nproc-per-node 8 $(which sact) sweep --file sweep.toml",
    )
)
@with_options(SweepConfig)
def sweep(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A sweep file (TOML, or JSON): docs/SWEEP.md."),
    ] = None,
    list_recipes: Annotated[
        bool, typer.Option("--list", help="List the recipes and variants, and exit.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print report.json on stdout.")] = False,
    **options: Any,
) -> None:
    """Every variant × seed on one store, trained and scored on identical episodes; one table."""
    from sact.fewshot.sweep_config import recipes_table, resolve_sweep, variants_table

    if list_recipes:
        with user_errors():
            print_table(Console(), recipes_table())
            print_table(Console(), variants_table())
        return
    with user_errors():  # before the training stack is imported: a mistake is refused at once
        typed = {name: value for name, value in options.items() if parameter_given(ctx, name)}
        config = checked(resolve_sweep(typed, file=file))
    from sact.fewshot.sweep import run_sweep

    with user_errors():
        result = run_sweep(config, console=stderr)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    for table in result.tables:
        print_table(stderr if json_out else Console(), table)
    stderr.print(f"report in {result.markdown} and {result.json_path}", highlight=False)
    if json_out:
        typer.echo(json.dumps(result.data, indent=2))


# -- demo, explain (demo.py, explain.py) --


@app.command(
    epilog=examples(
        "sact demo",
        "sact demo --task order --out /tmp/sact-demo",
        "sact demo --task all --seeds 3",
    )
)
@with_options(DemoConfig)
def demo(
    json_out: Annotated[bool, typer.Option("--json", help="Print demo.json on stdout.")] = False,
    **options: Any,
) -> None:
    """Synthetic tasks with known answers: every model variant, seeds, predicted vs measured."""
    from sact.demo.run import run_demo

    with user_errors():
        result = run_demo(config_from(DemoConfig, options, command="demo"), console=stderr)
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
@with_options(ExplainConfig)
def explain(**options: Any) -> None:
    """Draw SA-CT's cross-attention, frame by frame, from a query video onto a support video."""
    with user_errors():  # before torch is imported: a mistake is refused at once
        config = checked(config_from(ExplainConfig, options, command="explain"))
    from sact.explain import explain as draw

    with user_errors():
        path = draw(config)
    stderr.print(f"attention figure in {path}", highlight=False)


if __name__ == "__main__":
    app()
