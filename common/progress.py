"""The one progress display of every long job (extraction, training, scoring, verify, export, the
demo's videos): its label and the bar's description, the bar, done of total, what the job adds
(a rate, failures, a status) and the time left. Silent without a console (a library call)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


def progress_display(
    console: Console | None,
    *extra: ProgressColumn,
    label: str = "",
    transient: bool = True,
) -> Progress:
    """A progress display; `transient` ones vanish when done, the others stay as a record."""
    title = f"[bold]{label}[/] {{task.description}}" if label else "{task.description}"
    return Progress(
        TextColumn(title),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=console is None,
    )
