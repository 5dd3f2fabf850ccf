"""The `sact` command line: parses options and calls the library, nothing more."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

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


if __name__ == "__main__":
    app()
