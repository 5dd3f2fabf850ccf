"""Benchmark split lists: ``{train,val,test}list*.txt`` files of ``class/video_id`` lines.

These files come from other projects (OTAM, CMN, ARN via TRX/STRM), so every line is checked: the
class is the part before the first '/', the video id the rest, and an id that could name a path
outside the video folder is refused rather than joined into a path.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from sact.extract.errors import SactError

SPLIT_PARTS = ("train", "val", "test")


class SplitError(SactError):
    """A split that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class SplitEntry:
    label: str
    video_id: str
    where: str = ""  # the line it came from, e.g. "trainlist01.txt line 3", for messages


def builtin_splits_dir() -> Path:
    return Path(str(importlib.resources.files("sact.data") / "splits"))


def known_splits() -> list[str]:
    return sorted(path.name for path in builtin_splits_dir().iterdir() if path.is_dir())


def resolve_split_dir(name_or_dir: str) -> Path:
    """A built-in benchmark name (``ssv2_OTAM``) or a folder holding split list files."""
    candidate = Path(name_or_dir)
    if candidate.is_dir():
        return candidate
    if name_or_dir in known_splits():
        return builtin_splits_dir() / name_or_dir
    raise SplitError(
        f"unknown split {name_or_dir!r}: not a folder, and not one of " + ", ".join(known_splits())
    )


def parse_split_line(line: str, *, where: str) -> SplitEntry:
    label, slash, video_id = line.partition("/")
    label, video_id = label.strip(), video_id.strip()
    if not slash or not label or not video_id:
        raise SplitError(f"{where}: expected 'class/video_id', got {line!r}")
    unsafe = (
        "/" in video_id
        or "\\" in video_id
        or "\x00" in video_id
        or video_id in (".", "..")
        or label in (".", "..")
        or "\\" in label
        or "\x00" in label
    )
    if unsafe:
        raise SplitError(f"{where}: {line!r} would escape the video folder; refused")
    return SplitEntry(label=label, video_id=video_id, where=where)


def read_split_file(path: Path) -> list[SplitEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(f"cannot read split file {path}: {error}") from error
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entries.append(parse_split_line(line, where=f"{path.name} line {number}"))
    return entries


def load_split(name_or_dir: str) -> dict[str, list[SplitEntry]]:
    """The split's parts, e.g. ``{"train": [...], "val": [...], "test": [...]}``."""
    folder = resolve_split_dir(name_or_dir)
    parts: dict[str, list[SplitEntry]] = {}
    for part in SPLIT_PARTS:
        files = sorted(folder.glob(f"{part}list*.txt"))
        if len(files) > 1:
            raise SplitError(
                f"split {folder} has several {part} lists: " + ", ".join(f.name for f in files)
            )
        if files:
            parts[part] = read_split_file(files[0])
    if not parts:
        raise SplitError(f"split {folder} holds no trainlist/vallist/testlist*.txt file")
    return parts
