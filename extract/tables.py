"""The rich tables `sact extract` prints: a run's summary, its views and costs, and its failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from sact.store.tables import human_size

if TYPE_CHECKING:
    from sact.extract.pipeline import ExtractSummary, ViewCost


def summary_table(summary: ExtractSummary) -> Table:
    """The end-of-run table: counts, the rate, and the rate against its two bounds: what the
    decoders alone and the backbone alone would have delivered (their busy time in this run)."""
    table = Table(
        title=f"{summary.feature_set} in {summary.store}",
        show_header=True,
        caption="videos/s: this run's videos over the seconds after start-up (listing the videos, "
        "loading the backbone), as the progress bar counts them; seconds: the whole run",
    )
    table.add_column("videos", justify="right")
    table.add_column("done", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    table.add_column("pending", justify="right")
    table.add_column("this run", justify="right")
    table.add_column("videos/s after start-up", justify="right")
    table.add_column("decoding alone", justify="right")
    table.add_column("backbone alone", justify="right")
    table.add_column("÷ slower", justify="right")
    table.add_column("seconds", justify="right")
    measured = summary.over_bound > 0
    table.add_row(
        str(summary.videos),
        str(summary.done),
        str(summary.failed),
        str(summary.pending),
        str(summary.extracted_now),
        f"{summary.videos_per_second:.1f}",
        f"{summary.decode_bound:.1f}" if measured else "-",
        f"{summary.backbone_bound:.1f}" if measured else "-",
        f"{summary.over_bound:.2f}" if measured else "-",
        f"{summary.seconds:.1f}",
    )
    return table


def views_table(summary: ExtractSummary) -> Table:
    """Each view's counts and this run's cost, per video and relative to the canonical view
    (measured in the same run, so on the same machine and videos)."""
    table = Table(title=f"views of {summary.feature_set}")
    for column in ("view", "done", "failed", "pending", "this run", "s/video", "× canonical"):
        table.add_column(column, justify="left" if column == "view" else "right")
    canonical = summary.views[0].seconds_per_video
    for view in summary.views:
        relative = view.seconds_per_video / canonical if canonical and view.extracted_now else None
        table.add_row(
            view.view,
            f"[green]{view.done}",
            f"[red]{view.failed}" if view.failed else "0",
            str(view.pending),
            str(view.extracted_now),
            f"{view.seconds_per_video:.3f}" if view.extracted_now else "-",
            "-" if relative is None else f"{relative:.2f}",
        )
    return table


def cost_table(costs: list[ViewCost]) -> Table:
    """Printed before a run: per view, the videos it will extract and the bytes they add."""
    table = Table(
        title="this run",
        caption=f"bytes estimated from {costs[0].estimated_from}; time grows like videos: every "
        "view decodes each video and runs the backbone once",
    )
    for column in ("view", "videos to extract", "adds", "view when complete"):
        table.add_column(column, justify="left" if column == "view" else "right")
    for cost in costs:
        table.add_row(
            cost.view,
            str(cost.videos_now),
            human_size(cost.bytes_now),
            human_size(cost.bytes_total),
        )
    if len(costs) > 1:
        table.add_row(
            "all",
            str(sum(cost.videos_now for cost in costs)),
            human_size(sum(cost.bytes_now for cost in costs)),
            human_size(sum(cost.bytes_total for cost in costs)),
            style="bold",
        )
    return table


def failures_table(summary: ExtractSummary, *, limit: int = 20) -> Table:
    table = Table(title=f"{summary.failed} failed videos (run again to retry them)")
    table.add_column("video")
    table.add_column("path")
    table.add_column("reason", style="red")
    for failure in summary.failures[:limit]:
        table.add_row(failure.video_id, failure.path, failure.reason)
    if summary.failed > limit:
        table.add_row("…", f"{summary.failed - limit} more", "see sact info --json")
    return table
