"""Files written whole or not at all: a killed writer never leaves half a file under its name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
