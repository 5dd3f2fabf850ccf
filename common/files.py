"""Files written whole or not at all: a killed writer never leaves half a file under its name; and
the one reader of sact's versioned JSON files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sact.common.errors import SactError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write into; renamed onto ``path`` when the block
    ends without an error, removed when it raises. The rename replaces ``path`` in one step (same
    folder, so same file system), so a reader sees the old file or the new one, never a mix."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), all or nothing."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def read_versioned_json(
    path: Path, *, what: str, version: int, error: type[SactError]
) -> dict[str, Any]:
    """A JSON object that sact wrote as ``{"format": version, ...}`` (an episode file, an
    evaluation record, a checkpoint's description), or `error` with one line naming `what`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as reason:
        raise error(f"cannot read {what} {path}: {reason}") from reason
    if not isinstance(data, dict) or data.get("format") != version:
        raise error(f"{path} is not a sact {what} (format {version})")
    return data
