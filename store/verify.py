"""Find damaged chunks in a feature store and mark their videos for `sact extract` to redo.

Every chunk of a format-2 store ends with a crc32c of its bytes (docs/STORE.md), which zarr checks
on every read. ``verify_store`` reads every chunk of every view that holds done videos, and returns
one ``DamagedVideo`` per video a damaged chunk holds: a features chunk holds one video; a chunk of
a small per-video array (done, error, frame_index, ...) holds a whole shard. Format-1 chunks carry
no checksum: there only a chunk that no longer decodes is found.

A chunk that is missing (its file deleted, or a shard written only in part) does not fail to read:
zarr returns the array's fill value. So a video marked done without an error whose row in an
array it always stores (``ALWAYS_STORED``) reads as nothing but the fill value is listed too, as
missing: an all-zero features chunk, a frame index of -1s, an empty video id.

``mark_for_redo`` then marks those videos not done in their view (and rewrites a damaged ``done``
or ``error`` chunk fresh), so readers skip them and the next `sact extract` redoes them like any
pending video, keeping every other video of the shard bitwise. A damaged ``video_id``, ``path`` or
``label`` chunk cannot be redone that way (extraction reads the video list from it): it is reported
with ``redoable`` false.

    damaged = verify_store("feats.zarr")          # read-only
    mark_for_redo("feats.zarr", damaged)          # then: sact extract ... (same command)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr
from rich.console import Console
from rich.progress import Progress

from sact.common.progress import progress_display
from sact.store.feature_set import (
    CANONICAL,
    DAMAGED_CHUNK_ERRORS,
    FEATURES,
    PER_VIDEO_ARRAYS,
    RECORD_ARRAYS,
    VIEW_ARRAYS,
    VIEWS,
    as_text,
    is_hdf5,
)
from sact.store.feature_set import FeatureStoreError as VerifyError
from sact.store.zarr_store import feature_set_names, open_root, view_groups

# Arrays whose row of a video done without an error never equals the array's fill value: the
# features (no backbone gives all zeros over a whole clip), frame indices (>= 0), frame counts
# (>= 1), crop origins (>= 0), ids and paths (never empty). The label may be empty, the error is.
ALWAYS_STORED = (FEATURES, "frame_index", "num_frames", "crop_origin", "video_id", "path")
MISSING = "nothing stored for it: its chunk is missing (deleted, or never written)"


@dataclass(frozen=True)
class DamagedVideo:
    """One video whose stored data in one view cannot be trusted."""

    feature_set: str
    view: str  # "canonical" or an augmented view's name
    row: int  # the video's index in the feature set
    video_id: str  # "" when the video_id chunk itself is damaged
    array: str  # the array whose chunk failed
    reason: str  # what zarr said, e.g. the checksum mismatch
    redoable: bool  # whether `sact extract` redoes it once marked

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def has_checksums(array: zarr.Array) -> bool:
    """Whether each chunk (each inner chunk of a shard) of ``array`` ends with a crc32c."""
    codecs = array.metadata.to_dict().get("codecs", [])
    for codec in codecs:
        if codec.get("name") == "sharding_indexed":
            codecs = codec["configuration"]["codecs"]
    return any(codec.get("name") == "crc32c" for codec in codecs)


def _targets(group: zarr.Group) -> Iterator[tuple[str, zarr.Group, tuple[str, ...]]]:
    """(view name, the group holding its arrays, its per-video arrays), the canonical view
    first."""
    yield CANONICAL, group, PER_VIDEO_ARRAYS
    for name, view in view_groups(group).items():
        yield name, view, VIEW_ARRAYS


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def _read_chunk(array: Any, start: int, end: int) -> tuple[np.ndarray | None, str | None]:
    """The rows [start, end) of ``array``, or why they do not read."""
    try:
        return np.asarray(array[start:end]), None
    except DAMAGED_CHUNK_ERRORS as error:
        return None, _reason(error)


def _unstored(values: np.ndarray, fill_value: Any, usable: np.ndarray) -> np.ndarray:
    """Offsets of the usable rows of ``values`` that hold nothing but ``fill_value``."""
    return np.array(
        [row for row in np.flatnonzero(usable) if np.all(values[row] == fill_value)], dtype=int
    )


class _FeatureSetCheck:
    """Reads one feature set's chunks and collects what is damaged."""

    def __init__(self, name: str, group: zarr.Group, progress: Progress | None) -> None:
        self.name, self.group, self.progress = name, group, progress
        self.features: zarr.Array = group[FEATURES]
        self.count = int(self.features.shape[0])
        self.shard_size = int(self.features.shards[0])
        self.bounds = [
            (start, min(start + self.shard_size, self.count))
            for start in range(0, self.count, self.shard_size)
        ]
        self.damaged: list[DamagedVideo] = []
        self.video_ids = self._video_ids()

    def _video_ids(self) -> list[str]:
        """The ids, "" where their chunk is damaged (that damage is found with the records)."""
        ids = [""] * self.count
        for start, end in self.bounds:
            try:
                ids[start:end] = [str(v) for v in self.group["video_id"][start:end]]
            except DAMAGED_CHUNK_ERRORS:
                continue
        return ids

    def _add(self, view: str, rows: Sequence[int] | np.ndarray, array: str, reason: str) -> None:
        self.damaged += [
            DamagedVideo(
                feature_set=self.name,
                view=view,
                row=int(row),
                video_id=self.video_ids[row],
                array=array,
                reason=reason,
                redoable=array not in RECORD_ARRAYS,
            )
            for row in rows
        ]

    def check(self) -> list[DamagedVideo]:
        for view, group, arrays in _targets(self.group):
            done = self._done(view, group)
            usable = done & self._without_error(group)
            for array in arrays:  # the canonical view's records first
                if array != "done":
                    self._check_small(view, group[array], array, usable)
            self._check_features(view, group[FEATURES], done, usable)
        return self.damaged

    def _check_small(self, view: str, array: Any, name: str, usable: np.ndarray) -> None:
        for start, end in self.bounds:
            values, reason = _read_chunk(array, start, end)
            if values is None:
                self._add(view, range(start, end), name, reason or "")
            elif name in ALWAYS_STORED:
                missing = _unstored(values, array.fill_value, usable[start:end])
                self._add(view, missing + start, name, MISSING)

    def _without_error(self, group: zarr.Group) -> np.ndarray:
        """Videos without a recorded error; a damaged error chunk (reported with the other
        arrays) counts as none."""
        clean = np.ones(self.count, dtype=bool)
        for start, end in self.bounds:
            errors, _ = _read_chunk(group["error"], start, end)
            if errors is not None:
                clean[start:end] = [error == "" for error in as_text(errors)]
        return clean

    def _done(self, view: str, group: zarr.Group) -> np.ndarray:
        """The view's done markers; a damaged chunk counts as all done (all checked) and its
        rows are reported."""
        done = np.ones(self.count, dtype=bool)
        for start, end in self.bounds:
            try:
                done[start:end] = np.asarray(group["done"][start:end], dtype=bool)
            except DAMAGED_CHUNK_ERRORS as error:
                self._add(view, range(start, end), "done", _reason(error))
        return done

    def _check_features(
        self, view: str, features: Any, done: np.ndarray, usable: np.ndarray
    ) -> None:
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"{self.name} {view}", total=self.count)
        for start, end in self.bounds:
            values, _ = _read_chunk(features, start, end) if done[start:end].any() else (None, None)
            if values is not None:
                missing = _unstored(values, features.fill_value, usable[start:end])
                self._add(view, missing + start, FEATURES, MISSING)
            elif done[start:end].any():  # damaged: find the videos, one chunk per video
                for row in np.flatnonzero(done[start:end]) + start:
                    _, reason = _read_chunk(features, int(row), int(row) + 1)
                    if reason is not None:
                        self._add(view, [int(row)], FEATURES, reason)
            if self.progress is not None and task is not None:
                self.progress.advance(task, end - start)


def unchecked_arrays(location: str) -> list[str]:
    """Feature arrays of the store whose chunks carry no checksum (format 1)."""
    root = open_root(location, mode="r")
    found = []
    for name in feature_set_names(root):
        for view, group, _ in _targets(root[name]):
            if not has_checksums(group[FEATURES]):
                found.append(f"{name}/{view}")
    return found


def verify_store(
    location: str, *, feature_sets: Sequence[str] | None = None, console: Console | None = None
) -> list[DamagedVideo]:
    """Every damaged video of the store (or of the named feature sets), in store order; reads
    every chunk that holds a done video, writes nothing."""
    if is_hdf5(location):
        raise VerifyError(f"{location} is an HDF5 copy; verify the zarr store it was exported from")
    root = open_root(location, mode="r")
    names = feature_set_names(root) if feature_sets is None else list(feature_sets)
    progress = progress_display(console, label="verify")
    damaged: list[DamagedVideo] = []
    with progress:
        for name in names:
            group = root[name]
            if "sact" not in group.attrs:
                continue  # creation interrupted: nothing extracted into it
            check = _FeatureSetCheck(name, group, progress)
            damaged += check.check()
    return damaged


def mark_for_redo(location: str, damaged: Sequence[DamagedVideo]) -> int:
    """Mark the redoable damaged videos not done in their view, so readers skip them and the
    next `sact extract` redoes them; returns how many (video, view) pairs were marked.

    A damaged ``done`` or ``error`` chunk is rewritten whole (its shard's videos all pending,
    without errors); a damaged chunk of another per-video array marks its whole shard pending, so
    the redo never reads it; a damaged features chunk marks its one video pending.
    """
    root = open_root(location, mode="a")
    marked: set[tuple[str, str, int]] = set()
    by_target: dict[tuple[str, str], list[DamagedVideo]] = {}
    for damage in damaged:
        if damage.redoable:
            by_target.setdefault((damage.feature_set, damage.view), []).append(damage)
    for (name, view), found in by_target.items():
        group = root[name] if view == CANONICAL else root[name][VIEWS][view]
        shard_size = int(group[FEATURES].shards[0])
        count = int(group[FEATURES].shape[0])
        rewritten = {d.row // shard_size for d in found if d.array in ("done", "error")}
        for shard in sorted(rewritten):
            start, end = shard * shard_size, min((shard + 1) * shard_size, count)
            group["error"][start:end] = np.full(end - start, "", dtype=object)
            group["done"][start:end] = np.zeros(end - start, dtype=bool)
        rows = sorted({d.row for d in found if d.row // shard_size not in rewritten})
        if rows:
            done = group["done"]
            done.oindex[np.asarray(rows)] = False
        marked |= {(name, view, d.row) for d in found}
    return len(marked)


@dataclass
class VerifyReport:
    """What `sact info --verify` found and did."""

    damaged: list[DamagedVideo]
    marked_for_redo: int  # (video, view) pairs now pending
    not_marked: str  # why nothing was marked ("" when the store took the marks)
    unchecked: list[str]  # feature set/view whose chunks carry no checksum (format 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "damaged": [damage.to_json() for damage in self.damaged],
            "marked_for_redo": self.marked_for_redo,
            "not_marked": self.not_marked,
            "unchecked": self.unchecked,
        }

    def notes(self) -> list[str]:
        """One line each: what could not be checked, then the outcome (always last)."""
        notes = []
        if self.unchecked:
            notes.append(
                "no checksums in " + ", ".join(self.unchecked) + " (format 1): only chunks that "
                "no longer decode were found there"
            )
        if not self.damaged:
            return [*notes, "verified every chunk: no damaged video"]
        outcome = self.not_marked or (
            f"{self.marked_for_redo} marked pending: run the same `sact extract` command again "
            "to redo them"
        )
        return [*notes, f"{len(self.damaged)} damaged (video, view) pairs; {outcome}"]


def verify_and_mark(location: str, *, console: Console | None = None) -> VerifyReport:
    """Verify every chunk of the store, then mark what is damaged for redo where the store can
    be written (a read-only store or bucket is only listed)."""
    damaged = verify_store(location, console=console)
    marked, not_marked = 0, ""
    if any(damage.redoable for damage in damaged):
        try:
            marked = mark_for_redo(location, damaged)
        except (OSError, VerifyError) as error:
            not_marked = f"could not mark them for redo: {error}"
    return VerifyReport(damaged, marked, not_marked, unchecked_arrays(location))
