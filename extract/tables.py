"""The rich tables the extract side prints: a run's summary and failures (`sact extract`), a
store's feature sets and damaged videos (`sact info`, `--verify`) and an export's counts
(`sact export`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from sact.extract.inventory import StoreInventory
    from sact.extract.pipeline import ExtractSummary, ViewCost
    from sact.extract.verify import VerifyReport


def summary_table(summary: ExtractSummary) -> Table:
    """The end-of-run table: counts, then the failed videos with their reasons."""
    table = Table(title=f"{summary.feature_set} in {summary.store}", show_header=True)
    table.add_column("videos", justify="right")
    table.add_column("done", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    table.add_column("pending", justify="right")
    table.add_column("this run", justify="right")
    table.add_column("videos/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(
        str(summary.videos),
        str(summary.done),
        str(summary.failed),
        str(summary.pending),
        str(summary.extracted_now),
        f"{summary.videos_per_second:.1f}",
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


def human_size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "?"
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def counts_table(
    title: str,
    counts: dict[str, dict[str, int]],
    *,
    sizes: dict[str, int | None] | None = None,
    first_column: str = "feature set",
) -> Table:
    """One row per feature set (or view): videos, done, failed, pending (and its size when
    given)."""
    table = Table(title=title)
    table.add_column(first_column, style="bold", no_wrap=True)
    for column in ("videos", "done", "failed", "pending"):
        table.add_column(column, justify="right")
    if sizes is not None:
        table.add_column("size", justify="right")
    for name, count in counts.items():
        row = [
            name,
            str(count["videos"]),
            f"[green]{count['done']}",
            f"[red]{count['failed']}" if count["failed"] else "0",
            str(count["pending"]),
        ]
        if sizes is not None:
            row.append(human_size(sizes[name]))
        table.add_row(*row)
    return table


def export_table(summary: dict[str, Any]) -> Table:
    """What `sact export` copied: the counts of each feature set it wrote."""
    return counts_table(f"exported {summary['source']} → {summary['destination']}", summary["sets"])


def inventory_tables(found: StoreInventory) -> list[Table]:
    """An overview table of the feature sets, then one provenance table per feature set."""
    overview = counts_table(
        f"feature sets in {found.location}",
        {info.name: info.counts for info in found.feature_sets},
        sizes={info.name: info.size_bytes for info in found.feature_sets},
    )
    tables = [overview]
    if not found.feature_sets:
        overview.caption = "no feature set yet"
    for info in found.feature_sets:
        shape = "×".join(str(n) for n in info.shape)
        details = Table(title=f"{info.name}: features (N, T, P, D) = {shape}", show_header=False)
        details.add_column("key", style="dim")
        details.add_column("value")
        for key, value in sorted(info.attrs.items()):
            if key not in ("identity", "config"):
                details.add_row(key, str(value))
        tables.append(details)
        tables.append(
            counts_table(
                f"{info.name}: views (docs/STORE.md)",
                {view.name: view.counts for view in info.views},
                sizes={view.name: view.size_bytes for view in info.views},
                first_column="view",
            )
        )
    return tables


def damaged_table(report: VerifyReport, *, limit: int = 50) -> Table:
    table = Table(title=f"{len(report.damaged)} damaged (video, view) pairs")
    for column in ("feature set", "view", "video", "row", "array", "reason"):
        table.add_column(column, justify="right" if column == "row" else "left")
    for damage in report.damaged[:limit]:
        video = damage.video_id or "?"
        reason = damage.reason if damage.redoable else f"{damage.reason} (not redoable)"
        table.add_row(damage.feature_set, damage.view, video, str(damage.row), damage.array, reason)
    if len(report.damaged) > limit:
        table.add_row("…", "", f"{len(report.damaged) - limit} more", "", "", "see --json")
    return table
