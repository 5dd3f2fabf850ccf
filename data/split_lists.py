"""Benchmark split lists, in the two formats few-shot action recognition code bases use.

- OTAM / CMN / ARN (as TRX and STRM ship them): ``{train,val,test}list*.txt``, one
  ``class/video_id`` per line; the class is the part before the first '/', the video id the rest.
- HyRSM / MoLo / CLIP-FSAR: ``{train,val,test}_few_shot.txt``; a line starts with the part and the
  class index (``test0``), which is the class, then either ``/video_id`` (SSv2: ``test0/88644``)
  or ``//`` and a path under the dataset root (``val0//val_256/baking_cookies/-514AQUrSow.mp4``),
  whose file name without extension is the video id.

A folder holds one format or the other, detected from its file names. These files come from other
projects, so every line is checked: an id that could name a path, or a path that leaves the
dataset root (absolute, or climbing out with '..'), is refused rather than joined into a path.
A class listed in two parts (train and test, say) is refused too: few-shot results are on classes
the model never trained on.
"""

from __future__ import annotations

import importlib.resources
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sact.common.errors import SactError

SPLIT_PARTS = ("train", "val", "test")
FEW_SHOT_LINE = re.compile(r"(?P<label>(?:train|val|test)\d+)/(?P<rest>.+)")
# Splits whose classes depend on left and right ("pushing something from left to right"), so a
# mirrored video belongs to another class: Something-Something v2 (OTAM and CMN lists).
DIRECTION_SENSITIVE_PREFIXES = ("ssv2",)


class SplitError(SactError):
    """A split that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class SplitEntry:
    label: str
    video_id: str
    where: str = ""  # the line it came from, e.g. "trainlist01.txt line 3", for messages
    path: str | None = None  # the file under the dataset root a HyRSM/MoLo line names

    @property
    def line(self) -> str:
        """The entry as its split line names it, for messages."""
        return f"{self.label}//{self.path}" if self.path else f"{self.label}/{self.video_id}"


def builtin_splits_dir() -> Path:
    return Path(str(importlib.resources.files("sact.data") / "splits"))


def known_splits() -> list[str]:
    return sorted(path.name for path in builtin_splits_dir().iterdir() if path.is_dir())


def direction_sensitive(name_or_dir: str) -> bool:
    """Whether a split's classes change meaning under a horizontal flip (built-in name or a
    folder named like one)."""
    return Path(name_or_dir).name.lower().startswith(DIRECTION_SENSITIVE_PREFIXES)


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


def _refuse_unsafe_id(label: str, video_id: str, *, line: str, where: str) -> None:
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


def parse_split_line(line: str, *, where: str) -> SplitEntry:
    """An OTAM / CMN / ARN line: ``class/video_id``."""
    label, slash, video_id = line.partition("/")
    label, video_id = label.strip(), video_id.strip()
    if not slash or not label or not video_id:
        raise SplitError(f"{where}: expected 'class/video_id', got {line!r}")
    _refuse_unsafe_id(label, video_id, line=line, where=where)
    return SplitEntry(label=label, video_id=video_id, where=where)


def parse_few_shot_line(line: str, *, where: str) -> SplitEntry:
    """A HyRSM / MoLo / CLIP-FSAR line: ``test0/video_id`` or ``test0//path/under/the/root``."""
    match = FEW_SHOT_LINE.fullmatch(line.strip())
    if match is None:
        raise SplitError(
            f"{where}: expected '<part><class index>/video_id' or "
            f"'<part><class index>//path/under/the/root', got {line!r}"
        )
    label, rest = match["label"], match["rest"]
    if not rest.startswith("/"):
        _refuse_unsafe_id(label, rest, line=line, where=where)
        return SplitEntry(label=label, video_id=rest, where=where)
    path = rest.removeprefix("/")
    normalized = posixpath.normpath(path) if path else ""
    leaves_root = (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or normalized in (".", "..")
        or normalized.startswith("../")
    )
    if leaves_root:
        raise SplitError(f"{where}: {line!r} names a path outside the dataset root; refused")
    video_id = posixpath.splitext(posixpath.basename(normalized))[0]
    return SplitEntry(label=label, video_id=video_id, where=where, path=normalized)


@dataclass(frozen=True)
class SplitFormat:
    """A family of split list files: their names and how to read a line."""

    name: str
    pattern: str  # per part, e.g. "{part}list*.txt"
    parse_line: Callable[..., SplitEntry]

    def files(self, folder: Path, part: str) -> list[Path]:
        return sorted(folder.glob(self.pattern.format(part=part)))


SPLIT_FORMATS = (
    SplitFormat(
        "OTAM/CMN/ARN (trainlist*.txt, class/video_id)", "{part}list*.txt", parse_split_line
    ),
    SplitFormat(
        "HyRSM/MoLo/CLIP-FSAR (train_few_shot.txt, test0/video_id or test0//path)",
        "{part}_few_shot.txt",
        parse_few_shot_line,
    ),
)


@dataclass(frozen=True)
class Split:
    """A split list's parts, e.g. ``{"train": [...], "val": [...], "test": [...]}``, and the
    format its files were read in."""

    parts: dict[str, list[SplitEntry]]
    format: SplitFormat


def read_split_file(path: Path, split_format: SplitFormat = SPLIT_FORMATS[0]) -> list[SplitEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(f"cannot read split file {path}: {error}") from error
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entries.append(split_format.parse_line(line, where=f"{path.name} line {number}"))
    return entries


def detect_format(folder: Path) -> SplitFormat:
    """The one format whose files the folder holds."""
    present = [
        split_format
        for split_format in SPLIT_FORMATS
        if any(split_format.files(folder, part) for part in SPLIT_PARTS)
    ]
    if not present:
        patterns = " or ".join(f.pattern.format(part="{train,val,test}") for f in SPLIT_FORMATS)
        raise SplitError(f"split {folder} holds no split list ({patterns})")
    if len(present) > 1:
        raise SplitError(
            f"split {folder} holds lists of two formats: " + "; ".join(f.name for f in present)
        )
    return present[0]


def load_split(name_or_dir: str) -> Split:
    """The split's parts, read in the format detected from the folder's file names."""
    folder = resolve_split_dir(name_or_dir)
    split_format = detect_format(folder)
    parts: dict[str, list[SplitEntry]] = {}
    for part in SPLIT_PARTS:
        files = split_format.files(folder, part)
        if len(files) > 1:
            raise SplitError(
                f"split {folder} has several {part} lists: " + ", ".join(f.name for f in files)
            )
        if files:
            parts[part] = read_split_file(files[0], split_format)
    _refuse_shared_classes(parts, folder)
    return Split(parts=parts, format=split_format)


def _refuse_shared_classes(parts: dict[str, list[SplitEntry]], folder: Path) -> None:
    """Few-shot splits test on classes never seen in training: a class in two parts is refused."""
    first_seen: dict[str, tuple[str, SplitEntry]] = {}
    for part, entries in parts.items():
        for entry in entries:
            seen_part, seen = first_seen.setdefault(entry.label, (part, entry))
            if seen_part != part:
                raise SplitError(
                    f"split {folder}: class {entry.label!r} is in both {seen_part} ({seen.where}) "
                    f"and {part} ({entry.where}); the train, val and test classes of a few-shot "
                    "split must be disjoint"
                )
