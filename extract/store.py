"""The feature store: the one contract between stage 1 (writes) and stage 2 (reads).

Format 1 (docs/STORE.md): a zarr v3 group whose attrs hold ``{"sact": {"format": 1}}``, with one
subgroup per feature set (one extraction config). Inside a feature set:

    features    (N, T, P, D) float16  chunk = 1 video, shard = S videos
    frame_index (N, T) int32          which source frames were sampled
    num_frames  (N,) int32            frames the source video has
    video_id, path, label, error  (N,) str
    done        (N,) bool             commit markers, written last, one chunk per shard

The shard is the unit of work, of writing and of resume: a shard's arrays are written in one call
each, then its ``done`` chunk. A run killed at any moment leaves either a done shard or one that the
next run redoes. Every chunk write is atomic on local disk (zarr writes a temporary file and renames
it) and on object storage (a PUT is atomic), so a reader never sees half a chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
import zarr.storage

from extract.errors import SactError

FORMAT_VERSION = 1
FEATURE_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

FEATURES = "features"
PER_VIDEO_ARRAYS = ("video_id", "path", "label", "num_frames", "frame_index", "error", "done")


class FeatureStoreError(SactError):
    """A store that cannot be used as asked; the message is one line meant for the user."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a feature set: its id, its path relative to the videos folder, its class."""

    video_id: str
    path: str
    label: str


@dataclass(frozen=True)
class ShardResult:
    """What a worker computed for one shard, in the shard's video order."""

    features: np.ndarray  # (n, T, P, D) float16
    frame_index: np.ndarray  # (n, T) int32
    num_frames: np.ndarray  # (n,) int32
    errors: list[str]  # "" where the video succeeded


def is_url(location: str) -> bool:
    return "://" in location


def open_root(location: str, *, mode: Literal["r", "a"]) -> zarr.Group:
    """Open (or, with mode "a", create) the store's root group at a local path or fsspec URL."""
    store: Any
    read_only = mode == "r"
    if is_url(location) and not location.startswith("file://"):
        try:
            store = zarr.storage.FsspecStore.from_url(location, read_only=read_only)
        except (ImportError, ValueError) as error:
            raise FeatureStoreError(f"cannot open store {location}: {error}") from error
    else:
        store = zarr.storage.LocalStore(location.removeprefix("file://"), read_only=read_only)
    try:
        root = zarr.open_group(store=store, mode="r" if read_only else "a")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise FeatureStoreError(f"no feature store at {location}") from error
    except zarr.errors.ContainsArrayError as error:
        raise FeatureStoreError(f"{location} holds a zarr array, not a feature store") from error
    sact_attrs = root.attrs.get("sact")
    if sact_attrs is None:
        if read_only or len(list(root.keys())) > 0:
            raise FeatureStoreError(f"{location} is a zarr group but not a sact feature store")
        root.attrs["sact"] = {"format": FORMAT_VERSION}
    elif sact_attrs.get("format") != FORMAT_VERSION:
        raise FeatureStoreError(
            f"{location} has store format {sact_attrs.get('format')!r}; this sact reads format "
            f"{FORMAT_VERSION}"
        )
    return root


def feature_set_names(root: zarr.Group) -> list[str]:
    return sorted(name for name, _ in root.groups())


def check_feature_set_name(name: str) -> str:
    if not FEATURE_SET_NAME.match(name):
        raise FeatureStoreError(
            f"feature set name {name!r} must be letters, digits, '.', '_' or '-' "
            "(and not start with '.', '_' or '-')"
        )
    return name


def _text(values: np.ndarray) -> list[str]:
    return [str(value) for value in values]


class FeatureSet:
    """Read access to one feature set; stage 2 sees the store only through this class."""

    def __init__(self, group: zarr.Group, *, location: str = "") -> None:
        attrs = group.attrs.get("sact")
        if attrs is None or FEATURES not in group:
            raise FeatureStoreError(f"{group.name} is not a sact feature set")
        self.group = group
        self.location = location
        self.name = group.basename
        self.attrs: dict[str, Any] = dict(attrs)
        self.features: zarr.Array = group[FEATURES]  # type: ignore[assignment]
        count, self.frames, self.patches, self.dim = self.features.shape
        self.grid: tuple[int, int] = tuple(self.attrs["grid"])  # type: ignore[assignment]
        self.shard_size: int = int(self.features.shards[0])  # type: ignore[index]
        self.video_ids = _text(group["video_id"][:])
        self.paths = _text(group["path"][:])
        self.labels = _text(group["label"][:])
        self.errors = _text(group["error"][:])
        self.done: np.ndarray = np.asarray(group["done"][:], dtype=bool)
        self.num_frames: np.ndarray = np.asarray(group["num_frames"][:], dtype=np.int64)
        if len(self.video_ids) != count:
            raise FeatureStoreError(f"feature set {self.name} is inconsistent: arrays differ in N")

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def usable(self) -> np.ndarray:
        """Videos whose features are written and valid: done and without an error."""
        return self.done & (np.array([error == "" for error in self.errors], dtype=bool))

    def index_of(self) -> dict[str, int]:
        return {video_id: index for index, video_id in enumerate(self.video_ids)}

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Features of the given videos, in the given order: (n, T, P, D) float16."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, self.frames, self.patches, self.dim), dtype=np.float16)
        order = np.argsort(indices, kind="stable")
        sorted_indices = indices[order]
        out = np.empty((indices.size, self.frames, self.patches, self.dim), dtype=np.float16)
        # Contiguous runs become one slice read each: far fewer requests than a fancy index.
        run_starts = np.flatnonzero(np.diff(sorted_indices, prepend=-2) != 1)
        run_ends = np.append(run_starts[1:], sorted_indices.size)
        for start, end in zip(run_starts, run_ends, strict=True):
            block = self.features[int(sorted_indices[start]) : int(sorted_indices[end - 1]) + 1]
            out[order[start:end]] = block
        return out

    def read_frame_index(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.asarray(self.group["frame_index"].oindex[np.asarray(indices)], dtype=np.int64)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, len(self))

    def num_shards(self) -> int:
        return -(-len(self) // self.shard_size)

    def counts(self) -> dict[str, int]:
        failed = int(np.sum(self.done & ~self.usable))
        return {
            "videos": len(self),
            "done": int(np.sum(self.usable)),
            "failed": failed,
            "pending": int(np.sum(~self.done)),
        }


def open_feature_set(location: str, name: str | None = None) -> FeatureSet:
    """Open a feature set read-only; ``name`` may be omitted when the store holds exactly one."""
    root = open_root(location, mode="r")
    names = feature_set_names(root)
    if not names:
        raise FeatureStoreError(f"store {location} holds no feature set yet")
    if name is None:
        if len(names) > 1:
            raise FeatureStoreError(
                f"store {location} holds several feature sets, pick one with --feature-set: "
                + ", ".join(names)
            )
        name = names[0]
    if name not in names:
        raise FeatureStoreError(
            f"store {location} has no feature set {name!r}; it has: " + ", ".join(names)
        )
    return FeatureSet(root[name], location=location)  # type: ignore[arg-type]


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [
        f"{key}: stored {stored.get(key)!r}, asked {wanted.get(key)!r}"
        for key in keys
        if stored.get(key) != wanted.get(key)
    ]


class FeatureSetWriter:
    """Write access to one feature set, shard by shard.

    ``identity`` is everything that decides the features' values (backbone, weights hash, input
    size, frames, grid, ...). Opening an existing feature set with a different identity is refused:
    its features would silently mix two configs.
    """

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.features: zarr.Array = group[FEATURES]  # type: ignore[assignment]
        self.shard_size = int(self.features.shards[0])  # type: ignore[index]

    @classmethod
    def create_or_open(
        cls,
        root: zarr.Group,
        name: str,
        *,
        identity: dict[str, Any],
        provenance: dict[str, Any],
        videos: Sequence[VideoRecord],
        frames: int,
        patches: int,
        dim: int,
        grid: tuple[int, int],
        shard_size: int,
    ) -> FeatureSetWriter:
        check_feature_set_name(name)
        if shard_size < 1:
            raise FeatureStoreError("shard size must be at least 1")
        if name in feature_set_names(root) and "sact" not in root[name].attrs:
            # Creation was interrupted before the attrs: nothing was extracted into it yet.
            del root[name]
        if name in feature_set_names(root):
            writer = cls(root[name])  # type: ignore[arg-type]
            differences = _differences(writer.identity, identity)
            if differences:
                raise FeatureStoreError(
                    f"feature set {name!r} exists with a different config ("
                    + "; ".join(differences)
                    + "); choose another --name"
                )
            writer.append(videos)
            return writer
        group = root.create_group(name)
        attrs = {
            **identity,
            **provenance,
            "identity": sorted(identity),
            "grid": list(grid),
            "shard_size": shard_size,
        }
        count = len(videos)
        video_chunk = (shard_size,)
        group.create_array(
            FEATURES,
            shape=(count, frames, patches, dim),
            dtype="float16",
            chunks=(1, frames, patches, dim),
            shards=(shard_size, frames, patches, dim),
            fill_value=0,
            dimension_names=["video", "frame", "patch", "channel"],
        )
        group.create_array(
            "frame_index",
            shape=(count, frames),
            dtype="int32",
            chunks=(shard_size, frames),
            fill_value=-1,
            dimension_names=["video", "frame"],
        )
        for array_name in ("video_id", "path", "label", "error"):
            group.create_array(
                array_name,
                shape=(count,),
                dtype=str,
                chunks=video_chunk,
                fill_value="",
                dimension_names=["video"],
            )
        group.create_array(
            "num_frames", shape=(count,), dtype="int32", chunks=video_chunk, fill_value=0,
            dimension_names=["video"],
        )  # fmt: skip
        group.create_array(
            "done", shape=(count,), dtype=bool, chunks=video_chunk, fill_value=False,
            dimension_names=["video"],
        )  # fmt: skip
        writer = cls(group)
        writer._write_records(0, videos)
        # The attrs go last: a group without them is not yet a feature set (FeatureSet refuses it).
        group.attrs["sact"] = attrs
        return writer

    @property
    def identity(self) -> dict[str, Any]:
        attrs = self.group.attrs["sact"]
        return {key: attrs[key] for key in attrs["identity"]}

    def _write_records(self, start: int, videos: Sequence[VideoRecord]) -> None:
        end = start + len(videos)
        self.group["video_id"][start:end] = np.array([v.video_id for v in videos], dtype=object)
        self.group["path"][start:end] = np.array([v.path for v in videos], dtype=object)
        self.group["label"][start:end] = np.array([v.label for v in videos], dtype=object)

    def video_ids(self) -> list[str]:
        return _text(self.group["video_id"][:])

    def append(self, videos: Iterable[VideoRecord]) -> int:
        """Add the videos this feature set does not hold yet; done shards stay untouched."""
        known = set(self.video_ids())
        new = [video for video in videos if video.video_id not in known]
        if not new:
            return 0
        start = self.features.shape[0]
        end = start + len(new)
        for array_name in (FEATURES, *PER_VIDEO_ARRAYS):
            array = self.group[array_name]
            array.resize((end, *array.shape[1:]))
        self.features = self.group[FEATURES]  # type: ignore[assignment]
        self._write_records(start, new)
        return len(new)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def num_shards(self) -> int:
        return -(-len(self) // self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, len(self))

    def shards_to_do(self, *, retry_failed: bool = True) -> list[int]:
        """Shards with a video not done yet, or (``retry_failed``) with a video that failed."""
        done = np.asarray(self.group["done"][:], dtype=bool)
        needs_work = ~done
        if retry_failed:
            needs_work |= np.array([e != "" for e in _text(self.group["error"][:])], dtype=bool)
        return sorted({int(index) // self.shard_size for index in np.flatnonzero(needs_work)})

    def records(self, shard: int) -> list[VideoRecord]:
        start, end = self.shard_bounds(shard)
        ids = _text(self.group["video_id"][start:end])
        paths = _text(self.group["path"][start:end])
        labels = _text(self.group["label"][start:end])
        return [VideoRecord(*fields) for fields in zip(ids, paths, labels, strict=True)]

    def write_shard(self, shard: int, result: ShardResult) -> None:
        """Write one shard's arrays, each in one call, then its commit markers."""
        start, end = self.shard_bounds(shard)
        count = end - start
        if result.features.shape[0] != count or len(result.errors) != count:
            raise ValueError(f"shard {shard} holds {count} videos, got {result.features.shape[0]}")
        # A shard being redone (a failed video retried) is first marked not done, so a kill in
        # the middle of the rewrite leaves it pending rather than done with mixed contents.
        done = self.group["done"]
        if np.any(done[start:end]):
            done[start:end] = np.zeros(count, dtype=bool)
        self.features[start:end] = result.features.astype(np.float16, copy=False)
        self.group["frame_index"][start:end] = result.frame_index.astype(np.int32, copy=False)
        self.group["num_frames"][start:end] = result.num_frames.astype(np.int32, copy=False)
        self.group["error"][start:end] = np.array(result.errors, dtype=object)
        done[start:end] = np.ones(count, dtype=bool)
