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
the model never trained on. A HyRSM/MoLo line that names a path is in the class its path's folder
names (``train0//videos/brush_hair/x.avi`` is ``brush_hair``) when every class index has one folder
and no two indices of a part share one; otherwise the index (``train0``) stays the class.

A feature store records the split it was extracted with as a ``SplitRecord`` (docs/STORE.md): where
the lists were, each list's sha256 and the video ids of each part, so the store is usable from any
folder, and after the lists are gone.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sact.common.errors import SactError
from sact.common.words import counted

SPLIT_PARTS = ("train", "val", "test")
FEW_SHOT_LINE = re.compile(r"(?P<label>(?:train|val|test)\d+)/(?P<rest>.+)")
# The attrs key under which a feature set records its split (SplitRecord)
SPLIT_RECORD = "split_record"
# How alike a file name must be to an expected list's to be named as a likely typo (difflib ratio)
TYPO_SIMILARITY = 0.75
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
    index: str = ""  # the class index of a HyRSM/MoLo line (train0) whose class is its folder

    @property
    def line(self) -> str:
        """The entry as its split line names it, for messages."""
        label = self.index or self.label
        return f"{label}//{self.path}" if self.path else f"{label}/{self.video_id}"


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

    name: str  # the code bases that use it
    pattern: str  # per part, e.g. "{part}list*.txt"
    lines: str  # what a line holds, for messages
    parse_line: Callable[..., SplitEntry]

    @property
    def description(self) -> str:
        return f"{self.name} ({self.lines})"

    def files(self, folder: Path, part: str) -> list[Path]:
        return sorted(folder.glob(self.pattern.format(part=part)))

    def expected_name(self, part: str, beside: list[Path]) -> str:
        """The name of ``part``'s list, e.g. ``train_few_shot.txt``, or ``trainlist03.txt`` when
        the other parts' lists are ``vallist03.txt`` and ``testlist03.txt``."""
        prefix, _, suffix = self.pattern.format(part="").partition("*")
        numbers = [
            path.name.removeprefix(other).removeprefix(prefix).removesuffix(suffix)
            for path in beside
            for other in SPLIT_PARTS
            if path.name.startswith(other + prefix)
        ]
        return self.pattern.format(part=part).replace("*", numbers[0] if numbers else "01")


SPLIT_FORMATS = (
    SplitFormat("OTAM/CMN/ARN", "{part}list*.txt", "class/video_id", parse_split_line),
    SplitFormat(
        "HyRSM/MoLo/CLIP-FSAR",
        "{part}_few_shot.txt",
        "test0/video_id or test0//path",
        parse_few_shot_line,
    ),
)


@dataclass(frozen=True)
class Split:
    """A split list's parts, e.g. ``{"train": [...], "val": [...], "test": [...]}``, the format
    its files were read in, and where they are: ``files`` maps each part to its list."""

    parts: dict[str, list[SplitEntry]]
    format: SplitFormat
    folder: Path
    location: str  # what --split names again: the built-in name, or the folder, absolute
    files: dict[str, Path]

    def digests(self) -> dict[str, str]:
        """Each list's sha256, by file name."""
        return {path.name: file_digest(path) for path in self.files.values()}

    def read_description(self) -> str:
        """Which files were read, e.g. ``train_few_shot.txt (40 lines), val_few_shot.txt (1 line)``
        (for messages)."""
        return ", ".join(
            f"{path.name} ({counted(len(self.parts[part]), 'line')})"
            for part, path in self.files.items()
        )

    def missing_parts(self) -> str | None:
        """One line naming the lists this split lacks among train, val and test and the files
        beside them whose names are close (a likely typo), or None when it has all three."""
        missing = [part for part in SPLIT_PARTS if part not in self.files]
        if not missing:
            return None
        present = list(self.files.values())
        expected = [self.format.expected_name(part, present) for part in missing]
        others = sorted(
            path.name
            for path in self.folder.iterdir()
            if path.is_file() and path not in present and not path.name.startswith(".")
        )
        close = sorted(
            {
                name
                for want in expected
                for name in difflib.get_close_matches(want, others, n=3, cutoff=TYPO_SIMILARITY)
            }
        )
        beside = f" beside {', '.join(path.name for path in present)}" if present else ""
        verb = "is" if len(close) == 1 else "are"
        typo = f"; {', '.join(close)} {verb} close: a typo?" if close else ""
        return (
            f"split {self.location} has no {' or '.join(missing)} list: expected "
            f"{' and '.join(expected)}{beside} ({self.format.name} format){typo}"
        )


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
    files: dict[str, Path] = {}
    for part in SPLIT_PARTS:
        found = split_format.files(folder, part)
        if len(found) > 1:
            raise SplitError(
                f"split {folder} has several {part} lists: " + ", ".join(f.name for f in found)
            )
        if found:
            files[part] = found[0]
            parts[part] = read_split_file(found[0], split_format)
    parts = _classes_from_folders(parts)
    _refuse_shared_classes(parts, folder)
    builtin = not Path(name_or_dir).is_dir()  # resolve_split_dir found it among the built-ins
    location = name_or_dir if builtin else str(folder.resolve())
    return Split(parts=parts, format=split_format, folder=folder, location=location, files=files)


def _classes_from_folders(parts: dict[str, list[SplitEntry]]) -> dict[str, list[SplitEntry]]:
    """HyRSM/MoLo lines that name paths, in the class their path's folder names instead of the
    class index (``train0``): only where each index has one folder and no two indices of a part
    share one, else the folder is not the class and the indices stay."""
    folders: dict[str, set[str]] = defaultdict(set)
    for entries in parts.values():
        for entry in entries:
            folder = posixpath.basename(posixpath.dirname(entry.path)) if entry.path else ""
            folders[entry.label].add(folder)
    one_each = all(len(names) == 1 and "" not in names for names in folders.values())
    if not folders or not one_each:
        return parts
    class_of = {label: next(iter(names)) for label, names in folders.items()}
    for entries in parts.values():
        labels = {entry.label for entry in entries}
        if len({class_of[label] for label in labels}) < len(labels):
            return parts
    return {
        part: [replace(entry, label=class_of[entry.label], index=entry.label) for entry in entries]
        for part, entries in parts.items()
    }


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


def file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise SplitError(f"cannot read split file {path}: {error}") from error


@dataclass(frozen=True)
class SplitRecord:
    """The split a feature set was extracted with, as its attrs keep it (``SPLIT_RECORD``)."""

    location: str  # the built-in name, or the lists' folder, absolute
    format: str  # SplitFormat.name
    digests: dict[str, str]  # each list's sha256, by file name
    video_ids: dict[str, list[str]]  # each part's video ids, as its list names them

    @classmethod
    def of(cls, split: Split) -> SplitRecord:
        return cls(
            location=split.location,
            format=split.format.name,
            digests=split.digests(),
            video_ids={
                part: [entry.video_id for entry in entries] for part, entries in split.parts.items()
            },
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "format": self.format,
            "digests": self.digests,
            "video_ids": self.video_ids,
        }

    @classmethod
    def from_json(cls, raw: Any, *, where: str) -> SplitRecord:
        """A record read back from a store: data, checked before anything uses it."""
        problem = SplitError(f"{where}: its {SPLIT_RECORD} is malformed")
        if not isinstance(raw, Mapping):
            raise problem
        location, format_name = raw.get("location"), raw.get("format")
        digests, video_ids = raw.get("digests"), raw.get("video_ids")
        if not (
            isinstance(location, str)
            and isinstance(format_name, str)
            and isinstance(digests, Mapping)
            and isinstance(video_ids, Mapping)
        ):
            raise problem
        checked_digests = {k: v for k, v in digests.items() if isinstance(v, str)}
        checked_ids = {
            part: [video_id for video_id in ids if isinstance(video_id, str)]
            for part, ids in video_ids.items()
            if part in SPLIT_PARTS and isinstance(ids, list)
        }
        if checked_digests != digests or checked_ids != video_ids:
            raise problem
        return cls(location, format_name, checked_digests, checked_ids)

    def summary(self) -> str:
        """One line for `sact info`: where, the format, the videos per part and the digests."""
        parts = ", ".join(f"{part} {len(ids)}" for part, ids in self.video_ids.items())
        digests = ", ".join(f"{name} {digest[:12]}" for name, digest in self.digests.items())
        return f"{self.location} ({self.format}; videos: {parts}; sha256: {digests})"

    def differs_from(self, split: Split) -> bool:
        """Whether ``split``'s lists are not the ones recorded (another file, or edited)."""
        return split.digests() != self.digests
