"""Find the videos to extract: video files and frame folders under one folder, optionally
restricted to a split list.

Layouts (README.md, "The real workflow", stage 1):

    DIR/<id>.webm                      flat (SSv2)                       label ""
    DIR/<class>/<id>.mp4               class folders (Kinetics, HMDB)    label <class>
    DIR/<class>/<id>/00001.jpg         frame folders (TRX/STRM layout)   label <class>
    DIR/<id>/00001.jpg                 flat frame folders                label ""

A split line ``class/video_id`` is matched against what was found, never joined into a path, the
way TRX/STRM data loaders find their videos: first ``<class>/<id>``, then a flat ``<id>``, then any
single file named ``<id>``; a Kinetics id ``<youtube>_<start>_<end>`` also matches a file named
after the YouTube id alone. Class folder names match split classes with spaces or underscores.

A HyRSM/MoLo line that names a path under the dataset root (``test0//videos/fencing/x.avi``) is
that file of the videos folder, at any depth, checked to lie inside it (symbolic links included);
if the folder is laid out differently, the file is looked up like an id, in its class folder.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sact.common.errors import SactError
from sact.data.split_lists import Split, SplitEntry, load_split
from sact.store.feature_set import VideoRecord

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}
)
FRAME_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
KINETICS_ID = re.compile(r"^(?P<youtube>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


class VideoDiscoveryError(SactError):
    """The videos folder cannot be used as asked; the message is one line for the user."""


@dataclass(frozen=True)
class FoundVideo:
    """A video file or a frame folder, as found on disk."""

    path: str  # relative to the videos folder, '/'-separated
    label: str  # the class folder, or "" for a flat layout
    stem: str  # the file name without suffix, or the frame folder's name


@dataclass
class VideoList:
    """The videos one extraction covers, the split lines that named no file, and how many videos
    in the folder no split line names (with a split, only the split's videos are extracted)."""

    records: list[VideoRecord]
    unmatched: list[str] = field(default_factory=list)  # split lines that name no file
    unlisted: int = 0  # videos found in the folder that the split does not list
    split_format: str | None = None  # which split list format was read, if any
    unnamable: list[str] = field(default_factory=list)  # NOT_UTF8 files, their names escaped
    split: Split | None = None  # the split read, if any


def is_frame_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in FRAME_SUFFIXES and not path.name.startswith(".")
    )


def is_video_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")
    )


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(is_frame_file(child) for child in path.iterdir())


def is_broken_video_entry(path: Path) -> bool:
    """A dangling symbolic link, or a folder named like a video file (``x.mp4/``) that holds
    neither videos nor frames. Listed as videos, so that extraction records why they have no
    features instead of passing over them in silence."""
    if path.suffix.lower() not in VIDEO_SUFFIXES or path.name.startswith("."):
        return False
    if path.is_symlink() and not path.exists():
        return True
    return path.is_dir() and not any(
        is_video_file(child) or is_frame_file(child) for child in path.iterdir()
    )


def is_video_entry(path: Path) -> bool:
    return is_video_file(path) or is_broken_video_entry(path)


# Why a file whose name is not UTF-8 is not extracted: ids and paths are stored as UTF-8 text.
NOT_UTF8 = "its name is not valid UTF-8, so the store cannot name it: rename it to extract it"


def escaped_name(path: str) -> str:
    """A file name as UTF-8 text, its undecodable bytes written as \\xNN."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _nameable(found: list[FoundVideo]) -> tuple[list[FoundVideo], list[str]]:
    """``found`` split into the videos whose paths are UTF-8 and the escaped paths of the rest."""
    nameable, unnamable = [], []
    for video in found:
        if escaped_name(video.path) == video.path:
            nameable.append(video)
        else:
            unnamable.append(escaped_name(video.path))
    return nameable, unnamable


def _visible_children(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if not child.name.startswith("."))


def find_videos(videos_dir: Path) -> list[FoundVideo]:
    """Every video file and frame folder in the layouts above, sorted by path."""
    if not videos_dir.is_dir():
        raise VideoDiscoveryError(f"videos folder {videos_dir} does not exist or is not a folder")
    found: list[FoundVideo] = []
    for child in _visible_children(videos_dir):
        if is_video_entry(child):
            found.append(FoundVideo(path=child.name, label="", stem=child.stem))
        elif child.is_dir():
            grandchildren = _visible_children(child)
            if any(is_frame_file(entry) for entry in grandchildren):
                found.append(FoundVideo(path=child.name, label="", stem=child.name))
                continue
            for entry in grandchildren:
                if is_video_entry(entry):
                    found.append(
                        FoundVideo(
                            path=f"{child.name}/{entry.name}", label=child.name, stem=entry.stem
                        )
                    )
                elif is_frame_folder(entry):
                    found.append(
                        FoundVideo(
                            path=f"{child.name}/{entry.name}", label=child.name, stem=entry.name
                        )
                    )
    return sorted(found, key=lambda video: video.path)


def _class_key(label: str) -> str:
    return label.replace("_", " ").strip().casefold()


def _check_unique(records: list[VideoRecord]) -> list[VideoRecord]:
    paths_by_id: dict[str, list[str]] = defaultdict(list)
    for record in records:
        paths_by_id[record.video_id].append(record.path)
    duplicated = {video_id: paths for video_id, paths in paths_by_id.items() if len(paths) > 1}
    if duplicated:
        video_id, paths = next(iter(sorted(duplicated.items())))
        raise VideoDiscoveryError(
            f"{len(duplicated)} video id(s) name several files, e.g. {video_id!r}: "
            + ", ".join(paths)
            + "; video ids must be unique (rename the files or pass --split)"
        )
    return records


class _Matcher:
    """Looks split entries up among the found videos, the way TRX/STRM loaders do."""

    def __init__(self, found: list[FoundVideo]) -> None:
        self.by_class_and_stem: dict[tuple[str, str], FoundVideo] = {}
        self.by_stem: dict[str, list[FoundVideo]] = defaultdict(list)
        for video in found:
            self.by_class_and_stem.setdefault((_class_key(video.label), video.stem), video)
            self.by_stem[video.stem].append(video)

    def _lookup(self, label: str, stem: str) -> FoundVideo | None:
        in_class = self.by_class_and_stem.get((_class_key(label), stem))
        if in_class is not None:
            return in_class
        flat = self.by_class_and_stem.get(("", stem))
        if flat is not None:
            return flat
        anywhere = self.by_stem.get(stem, [])
        return anywhere[0] if len(anywhere) == 1 else None

    def match(self, entry: SplitEntry) -> FoundVideo | None:
        video = self._lookup(entry.label, entry.video_id)
        if video is None and (kinetics := KINETICS_ID.match(entry.video_id)):
            video = self._lookup(entry.label, kinetics["youtube"])
        return video


class _SplitMatcher:
    """Finds the file of each split entry: by path when the line names one, else by id."""

    def __init__(self, videos_dir: Path) -> None:
        if not videos_dir.is_dir():
            raise VideoDiscoveryError(
                f"videos folder {videos_dir} does not exist or is not a folder"
            )
        self.videos_dir = videos_dir

    @cached_property
    def found_and_unnamable(self) -> tuple[list[FoundVideo], list[str]]:
        return _nameable(find_videos(self.videos_dir))

    @property
    def found(self) -> list[FoundVideo]:
        return self.found_and_unnamable[0]

    @cached_property
    def by_id(self) -> _Matcher:
        return _Matcher(self.found)

    def at_path(self, entry: SplitEntry) -> FoundVideo | None:
        assert entry.path is not None
        candidate = self.videos_dir.joinpath(*entry.path.split("/"))
        if not candidate.resolve().is_relative_to(self.videos_dir.resolve()):
            raise VideoDiscoveryError(
                f"split line {entry.line!r} names a file outside {self.videos_dir}; refused"
            )
        if not (is_video_file(candidate) or is_frame_folder(candidate)):
            return None
        label = posixpath.basename(posixpath.dirname(entry.path))
        return FoundVideo(path=entry.path, label=label, stem=entry.video_id)

    def match(self, entry: SplitEntry) -> FoundVideo | None:
        if entry.path is not None:
            video = self.at_path(entry)
            if video is not None:
                return video
            class_folder = posixpath.basename(posixpath.dirname(entry.path))
            return self.by_id.match(SplitEntry(label=class_folder, video_id=entry.video_id))
        return self.by_id.match(entry)


def list_videos(videos_dir: Path, split: str | None = None) -> VideoList:
    """The videos to extract: everything found, or (with ``split``) the split's videos.

    Without a split, ids are file stems and labels are class folders. With a split, ids and labels
    come from the split lines (all of its train/val/test parts, in that order); lines that name no
    file are returned in ``unmatched``.
    """
    if split is None:
        found, unnamable = _nameable(find_videos(videos_dir))
        if not found:
            raise VideoDiscoveryError(
                f"no videos found in {videos_dir} (looked for "
                f"{', '.join(sorted(VIDEO_SUFFIXES))} files, flat or in class folders, and "
                "class/video/00001.jpg frame folders)"
            )
        records = [VideoRecord(video_id=v.stem, path=v.path, label=v.label) for v in found]
        return VideoList(records=_check_unique(records), unnamable=unnamable)
    loaded = load_split(split)
    matcher = _SplitMatcher(videos_dir)
    records, unmatched = [], []
    listed: dict[str, SplitEntry] = {}  # video id -> the split line that listed it first
    for entries in loaded.parts.values():
        for entry in entries:
            first = listed.setdefault(entry.video_id, entry)
            if first is not entry:
                if first.label != entry.label:
                    raise VideoDiscoveryError(
                        f"video id {entry.video_id!r} is listed under two classes of split "
                        f"{split!r}: {first.label!r} ({first.where}) and {entry.label!r} "
                        f"({entry.where}); a video belongs to one class"
                    )
                continue
            video = matcher.match(entry)
            if video is None:
                unmatched.append(entry.line)
            else:
                records.append(
                    VideoRecord(video_id=entry.video_id, path=video.path, label=entry.label)
                )
    if not records:
        raise VideoDiscoveryError(
            f"none of the {len(unmatched)} videos of split {split!r} "
            f"({loaded.format.name}) was found in {videos_dir} (e.g. {unmatched[0]!r})"
        )
    extracted = {record.path for record in records}
    unlisted = sum(video.path not in extracted for video in matcher.found)
    return VideoList(
        records=records,
        unmatched=unmatched,
        unlisted=unlisted,
        split_format=loaded.format.name,
        unnamable=matcher.found_and_unnamable[1],
        split=loaded,
    )


def resolve_video_path(videos_dir: Path, relative: str) -> Path:
    """The file a stored ``path`` names, checked to lie inside the videos folder.

    Paths read back from a store (on resume) are data, not trusted: an absolute path or one that
    climbs out with '..' is refused.
    """
    parts = relative.split("/")
    if not relative or relative.startswith("/") or "\\" in relative or ".." in parts:
        raise VideoDiscoveryError(f"stored video path {relative!r} leaves the videos folder")
    candidate = videos_dir.joinpath(*parts)
    if candidate.is_symlink() and not candidate.exists():
        raise VideoDiscoveryError(
            f"dangling symbolic link: {relative} points to {os.readlink(candidate)}, which does "
            "not exist"
        )
    if not candidate.resolve().is_relative_to(videos_dir.resolve()):
        raise VideoDiscoveryError(f"stored video path {relative!r} leaves the videos folder")
    return candidate
