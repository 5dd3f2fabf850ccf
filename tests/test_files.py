"""The one atomic write (common/files.py) every writer of a whole file goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from sact.common.files import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half of the ne", encoding="utf-8")
        raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]


def test_a_finished_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_text_atomic(target, "old\n")
    with atomic_path(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".")
        assert target.read_text(encoding="utf-8") == "old\n"  # untouched until the end
        partial.write_text("new\n", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "new\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]
