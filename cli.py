"""The `sact` command line: parses options and calls the library, nothing more."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from extract.errors import SactError

app = typer.Typer(
    name="sact",
    help="SA-CT few-shot action recognition on a cached feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)


def fail(message: str, *, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


# ---- commands (each section owned by the module it calls) ----


# -- extract (extract/pipeline.py) --


@app.command()
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
    ] = None,
    backbone: Annotated[str, typer.Option(help="Any timm model name.")] = "resnet50.tv_in1k",
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file (.safetensors or .pth).")
    ] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Seeded random weights (tests, demos).")
    ] = False,
    frames: Annotated[int, typer.Option(help="Frames per video, T.")] = 8,
    size: Annotated[int | None, typer.Option(help="Crop size; default: the backbone's.")] = None,
    grid: Annotated[int | None, typer.Option(help="Pool the patch grid to H×H.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Videos per forward pass.")] = 16,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (0: none).")] = None,
    name: Annotated[str | None, typer.Option(help="Feature set name; default from config.")] = None,
    shard_size: Annotated[int, typer.Option(help="Videos per shard (unit of resume).")] = 64,
    json_out: Annotated[
        bool, typer.Option("--json", help="Also print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Extract frozen-backbone patch features of every video into a resumable feature store."""
    from extract.pipeline import (
        ExtractConfig,
        default_workers,
        failures_table,
        run_extraction,
        summary_table,
    )

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
        workers=default_workers() if workers is None else workers,
        name=name,
        shard_size=shard_size,
    )
    with user_errors():
        summary = run_extraction(config, console=stderr)
    if summary.unmatched:
        stderr.print(
            f"[yellow]{len(summary.unmatched)} split lines name no file[/], e.g. "
            + ", ".join(repr(line) for line in summary.unmatched[:3]),
            highlight=False,
        )
    stderr.print(summary_table(summary))
    if summary.failures:
        stderr.print(failures_table(summary))
    if json_out:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    if summary.failed:
        raise typer.Exit(1)


# -- info (extract/inventory.py) --


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="Feature store (.zarr path or URL).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a store's feature sets: provenance, done / failed / pending, size on disk."""
    from extract.inventory import inventory, inventory_tables

    with user_errors():
        found = inventory(store)
    if json_out:
        typer.echo(json.dumps(found.to_json(), indent=2))
        return
    console = Console()
    for table in inventory_tables(found):
        console.print(table)


if __name__ == "__main__":
    app()
