"""What stage 2 reads, whatever holds it: the ``FeatureSet`` interface and what its backends share.

A feature set (docs/STORE.md) is N videos' patch features ``(N, T, P, D)`` float16 plus small
per-video arrays (video_id, path, label, error, done, num_frames, frame_index) and its attrs: the
canonical view. Format 2 adds augmented views (extract/views.py), each with its own features,
frame_index, crop_origin, error and done. The backends implement ``FeatureSet`` on their storage:

    store/zarr_store.py  the zarr v3 store that `sact extract` writes (local path or fsspec URL)
    store/hdf5.py        a read-only HDF5 copy made by `sact export`

and ``extract.store.open_feature_set`` picks the backend from the location. Nothing here imports
zarr or h5py.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sact.common.errors import SactError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1: no views, no checksums; read as is, upgraded when written to
FEATURE_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

FEATURES = "features"
PER_VIDEO_ARRAYS = ("video_id", "path", "label", "num_frames", "frame_index", "error", "done")
VIEWS = "views"  # the subgroup of a feature set holding its augmented views
CANONICAL = "canonical"  # the view at the feature set's top level, the one evaluation uses
VIEW_ARRAYS = ("frame_index", "crop_origin", "error", "done")  # per video, besides features
RECORD_ARRAYS = ("video_id", "path", "label")  # what a video is; the same for every view
HDF5_SUFFIXES = (".h5", ".hdf5")
# What a backend raises on a chunk that does not decode: zarr on a crc32c mismatch or a damaged
# shard index (ValueError), a codec on a corrupt compressed stream (RuntimeError).
DAMAGED_CHUNK_ERRORS = (ValueError, RuntimeError)


class FeatureStoreError(SactError):
    """A store that cannot be used as asked; the message is one line meant for the user."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a feature set: its id, its path relative to the videos folder, its class."""

    video_id: str
    path: str
    label: str


@dataclass(frozen=True)
class VideoFailure:
    """A video that is done but could not be extracted, and why."""

    video_id: str
    path: str
    reason: str


def num_shards(videos: int, shard_size: int) -> int:
    """Shards of ``shard_size`` consecutive videos that ``videos`` fill (the last may be short)."""
    return -(-videos // shard_size)


def shard_bounds(shard: int, *, shard_size: int, videos: int) -> tuple[int, int]:
    """The videos ``[start, end)`` of ``shard``."""
    start = shard * shard_size
    return start, min(start + shard_size, videos)


@dataclass
class StoredView:
    """One view of a feature set as read: its features and per-video state."""

    name: str
    attrs: dict[str, Any]  # {"view": the spec (extract/views.py), provenance}; {} for canonical
    features: Any  # zarr.Array or h5py.Dataset, (N, T, P, D) float16
    frame_index: np.ndarray  # (N, T) int64
    done: np.ndarray  # (N,) bool
    errors: list[str]


def is_url(location: str) -> bool:
    return "://" in location


def is_hdf5(location: str) -> bool:
    """HDF5 files are read-only interchange copies of a store (``sact export``)."""
    return location.lower().endswith(HDF5_SUFFIXES)


def check_feature_set_name(name: str) -> str:
    if not FEATURE_SET_NAME.match(name):
        raise FeatureStoreError(
            f"feature set name {name!r} must be letters, digits, '.', '_' or '-' "
            "(and not start with '.', '_' or '-')"
        )
    return name


def choose_feature_set(location: str, names: Sequence[str], name: str | None) -> str:
    """The feature set asked for, or the only one; a clear error naming the choices otherwise."""
    if not names:
        raise FeatureStoreError(f"store {location} holds no feature set yet")
    if name is None:
        if len(names) > 1:
            raise FeatureStoreError(
                f"store {location} holds several feature sets, pick one with --feature-set: "
                + ", ".join(names)
            )
        return names[0]
    if name not in names:
        raise FeatureStoreError(
            f"store {location} has no feature set {name!r}; it has: " + ", ".join(names)
        )
    return name


def as_text(values: np.ndarray) -> list[str]:
    """A stored string array as Python strings (h5py hands back bytes, zarr str)."""
    return [str(value.decode() if isinstance(value, bytes) else value) for value in values]


def damaged(what: str, location: str, error: Exception) -> FeatureStoreError:
    return FeatureStoreError(
        f"{what} in {location} is damaged ({error}); `sact info --verify {location}` lists the "
        "damaged videos and marks them for `sact extract` to redo"
    )


def gather_rows(array: Any, indices: Sequence[int] | np.ndarray, *, dtype: Any) -> np.ndarray:
    """``array[indices]`` along the first axis, in the given order, for a zarr array or an h5py
    dataset: contiguous runs of sorted indices become one slice read each, far fewer requests
    (and far fewer chunk decodes) than a fancy index."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((indices.size, *array.shape[1:]), dtype=dtype)
    if indices.size == 0:
        return out
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    run_starts = np.flatnonzero(np.diff(sorted_indices, prepend=-2) != 1)
    run_ends = np.append(run_starts[1:], sorted_indices.size)
    for start, end in zip(run_starts, run_ends, strict=True):
        block = array[int(sorted_indices[start]) : int(sorted_indices[end - 1]) + 1]
        out[order[start:end]] = block
    return out


# Far above any real feature set (Kinetics-700 has 650k videos; a ViT-H at 448 px 784 patches of
# 1280 channels), so a store claiming more is damaged or hostile: refused before anything is read.
MAX_VIDEOS = 100_000_000
MAX_FRAMES = 10_000
MAX_PATCHES = 100_000
MAX_DIM = 100_000
MAX_VIDEO_BYTES = 2**31  # one video's (T, P, D) float16, what a reader holds per row
INTEGER_ARRAYS = ("num_frames", "frame_index")


def _claimed_layout_problem(arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> str | None:
    """What is impossible in the shapes, dtypes and attrs a feature set claims, or None. Reads
    array metadata only: nothing is allocated for the arrays' values."""
    features = arrays[FEATURES]
    shape = tuple(int(n) for n in features.shape)
    if len(shape) != 4:
        return f"features of shape {shape}, not (N, T, P, D)"
    count, frames, patches, dim = shape
    limits = {"N": (count, MAX_VIDEOS), "T": (frames, MAX_FRAMES)}
    limits |= {"P": (patches, MAX_PATCHES), "D": (dim, MAX_DIM)}
    for letter, (value, limit) in limits.items():
        if not 0 < value <= limit and not (letter == "N" and value == 0):
            return f"features of shape {shape}: {letter} = {value} is outside 1..{limit}"
    if frames * patches * dim * 2 > MAX_VIDEO_BYTES:
        return f"features of shape {shape}: {frames * patches * dim * 2} bytes per video"
    if np.dtype(features.dtype) != np.float16:
        return f"features of dtype {features.dtype}, not float16"
    for name in PER_VIDEO_ARRAYS:
        if name not in arrays:
            return f"no {name} array"
        array = arrays[name]
        if int(array.shape[0]) != count:
            return f"{name} of length {array.shape[0]} for {count} videos"
        if name in INTEGER_ARRAYS and np.dtype(array.dtype).kind not in "iu":
            return f"{name} of dtype {array.dtype}, not integers"
    if tuple(int(n) for n in arrays["frame_index"].shape) != (count, frames):
        return f"frame_index of shape {tuple(arrays['frame_index'].shape)}, not {(count, frames)}"
    if np.dtype(arrays["done"].dtype) != np.bool_:
        return f"done of dtype {arrays['done'].dtype}, not bool"
    grid, shard_size = attrs.get("grid"), attrs.get("shard_size")
    if (
        not isinstance(grid, list)
        or len(grid) != 2
        or not all(isinstance(side, int) and side > 0 for side in grid)
        or grid[0] * grid[1] != patches
    ):
        return f"a patch grid {grid!r} that does not lay out its P = {patches} patches"
    if not isinstance(shard_size, int) or not 0 < shard_size <= MAX_VIDEOS:
        return f"a shard size {shard_size!r}"
    return None


def check_claimed_layout(
    arrays: Mapping[str, Any], attrs: Mapping[str, Any], *, name: str, location: str
) -> None:
    """Refuse, in one line, a feature set whose metadata claims absurd or inconsistent shapes,
    dtypes or attrs (docs/STORE.md), before a reader allocates anything for it."""
    problem = _claimed_layout_problem(arrays, attrs)
    if problem is not None:
        raise FeatureStoreError(
            f"feature set {name} in {location} claims {problem}; refused before reading it "
            "(a damaged or hostile store)"
        )


class FeatureSet(ABC):
    """Read access to one feature set; stage 2 sees a store only through this interface.

    A backend opens its storage and hands the per-video arrays, the attrs and each augmented
    view to this constructor, which reads the small arrays once; ``size_bytes`` is the backend's
    own, and ``read`` reads the arrays the backend handed over.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        attrs: dict[str, Any],
        *,
        name: str,
        location: str,
        views: Mapping[str, tuple[Mapping[str, Any], dict[str, Any]]] | None = None,
    ) -> None:
        """``arrays`` maps ``features`` and each name of ``PER_VIDEO_ARRAYS`` to an array that
        slices like numpy (a zarr array, an h5py dataset); ``views`` maps each augmented view's
        name to its arrays (``features`` and ``VIEW_ARRAYS``) and its attrs."""
        check_claimed_layout(arrays, attrs, name=name, location=location)
        self.name = name
        self.location = location
        self.attrs: dict[str, Any] = attrs
        self.features: Any = arrays[FEATURES]
        count, self.frames, self.patches, self.dim = (int(n) for n in self.features.shape)
        self.grid: tuple[int, int] = tuple(self.attrs["grid"])
        self.shard_size: int = int(self.attrs["shard_size"])
        # The done markers first: a writer writes them last, so every row read as done here has
        # its values written before the reads below (docs/STORE.md, "Which rows to use").
        self.done: np.ndarray = np.asarray(self._small(arrays, "done"), dtype=bool)
        self.video_ids = as_text(self._small(arrays, "video_id"))
        self.paths = as_text(self._small(arrays, "path"))
        self.labels = as_text(self._small(arrays, "label"))
        self.errors = as_text(self._small(arrays, "error"))
        self.num_frames: np.ndarray = np.asarray(self._small(arrays, "num_frames"), dtype=np.int64)
        self.frame_index: np.ndarray = np.asarray(
            self._small(arrays, "frame_index"), dtype=np.int64
        )
        if len(self.video_ids) != count:
            raise FeatureStoreError(f"feature set {self.name} is inconsistent: arrays differ in N")
        self.views: dict[str, StoredView] = {
            CANONICAL: StoredView(
                CANONICAL, {}, self.features, self.frame_index, self.done, self.errors
            )
        }
        for view_name, (view_arrays, view_attrs) in sorted((views or {}).items()):
            where = f"{VIEWS}/{view_name}/"
            for array in VIEW_ARRAYS:
                if array in view_arrays and int(view_arrays[array].shape[0]) != count:
                    raise FeatureStoreError(
                        f"feature set {name} in {location} claims {where}{array} of length "
                        f"{view_arrays[array].shape[0]} for {count} videos; refused before "
                        "reading it (a damaged or hostile store)"
                    )
            done = np.asarray(self._small(view_arrays, "done", where), dtype=bool)  # first
            view = StoredView(
                name=view_name,
                attrs=view_attrs,
                features=view_arrays[FEATURES],
                frame_index=np.asarray(
                    self._small(view_arrays, "frame_index", where), dtype=np.int64
                ),
                done=done,
                errors=as_text(self._small(view_arrays, "error", where)),
            )
            if tuple(view.features.shape) != tuple(self.features.shape):
                raise FeatureStoreError(
                    f"view {view_name} of feature set {self.name} is inconsistent: its features "
                    f"are {tuple(view.features.shape)}, the canonical ones {self.shape}"
                )
            self.views[view_name] = view

    def _small(self, arrays: Mapping[str, Any], array: str, where: str = "") -> np.ndarray:
        """A whole per-video array; a damaged chunk is one line naming the array."""
        try:
            return arrays[array][:]
        except DAMAGED_CHUNK_ERRORS as error:
            what = f"array {where}{array} of feature set {self.name}"
            raise damaged(what, self.location, error) from error

    def read(self, indices: Sequence[int] | np.ndarray, view: str = CANONICAL) -> np.ndarray:
        """Features of the given videos in ``view``, in the given order: (n, T, P, D) float16.

        A chunk that fails its checksum (or does not decode) stops the read with one line naming
        the video, rather than handing damaged features to training.
        """
        array = self.view(view).features
        try:
            return gather_rows(array, indices, dtype=np.float16)
        except DAMAGED_CHUNK_ERRORS as error:
            found = self._damaged_video(array, indices, view)
            if found is None:
                raise
            raise found from error

    def _damaged_video(
        self, array: Any, indices: Sequence[int] | np.ndarray, view: str
    ) -> FeatureStoreError | None:
        """The error naming the first of ``indices`` whose chunk does not read, if any does."""
        for row in sorted({int(index) for index in np.asarray(indices).ravel()}):
            try:
                array[row]
            except DAMAGED_CHUNK_ERRORS as error:
                in_view = "" if view == CANONICAL else f", view {view}"
                what = f"features of video {self.video_ids[row]!r} (row {row}{in_view})"
                return damaged(f"{what} of feature set {self.name}", self.location, error)
        return None

    @abstractmethod
    def size_bytes(self) -> int | None:
        """Bytes the feature set takes in its storage; None where the storage cannot say."""

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The features' (N, T, P, D)."""
        return len(self), self.frames, self.patches, self.dim

    @property
    def usable(self) -> np.ndarray:
        """Videos whose features are written and valid: done and without an error."""
        return self.done & (np.array([error == "" for error in self.errors], dtype=bool))

    def view_names(self) -> list[str]:
        """The canonical view first, then the augmented views by name."""
        return list(self.views)

    def view(self, name: str) -> StoredView:
        if name not in self.views:
            raise FeatureStoreError(
                f"feature set {self.name} has no view {name!r}; it has: "
                + ", ".join(self.view_names())
            )
        return self.views[name]

    def usable_in(self, view: str) -> np.ndarray:
        """Videos usable in ``view``: usable in the canonical view, and done there without
        an error."""
        stored = self.view(view)
        valid = stored.done & np.array([error == "" for error in stored.errors], dtype=bool)
        return self.usable & valid

    def index_of(self) -> dict[str, int]:
        return {video_id: index for index, video_id in enumerate(self.video_ids)}

    def read_frame_index(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.frame_index[np.asarray(indices, dtype=np.int64)]

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        return shard_bounds(shard, shard_size=self.shard_size, videos=len(self))

    def num_shards(self) -> int:
        return num_shards(len(self), self.shard_size)

    def counts(self, view: str = CANONICAL) -> dict[str, int]:
        """Videos in all, done (usable), failed (done with an error), pending (not done), in
        ``view``."""
        stored = self.view(view)
        usable = self.usable_in(view)
        return {
            "videos": len(self),
            "done": int(np.sum(usable)),
            "failed": int(np.sum(stored.done & ~usable)),
            "pending": int(np.sum(~stored.done)),
        }

    def failures(self) -> list[VideoFailure]:
        """The failed videos, in store order."""
        return [
            VideoFailure(video_id=self.video_ids[i], path=self.paths[i], reason=self.errors[i])
            for i in np.flatnonzero(self.done & ~self.usable)
        ]
