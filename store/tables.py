"""The rich tables a store's commands print: its feature sets and damaged videos (`sact info`,
`--verify`) and an export's counts (`sact export`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from sact.data.split_lists import SPLIT_RECORD, SplitError, SplitRecord

if TYPE_CHECKING:
    from sact.store.inventory import StoreInventory
    from sact.store.verify import VerifyReport


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


def split_record_line(raw: Any, *, where: str) -> str:
    """The recorded split in one line (its video ids are in `sact info --json`)."""
    try:
        return SplitRecord.from_json(raw, where=where).summary()
    except SplitError as error:
        return str(error)


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
            if key == SPLIT_RECORD:
                details.add_row(key, split_record_line(value, where=info.name))
            elif key not in ("identity", "config"):
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
