"""The zarr v3 feature store that `sact extract` writes: its reader and its writer.

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

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.storage

from sact.extract.errors import is_storage_error
from sact.extract.feature_set import (
    FEATURE_SET_NAME,
    FEATURES,
    FORMAT_VERSION,
    PER_VIDEO_ARRAYS,
    FeatureSet,
    FeatureStoreError,
    VideoRecord,
    as_text,
    check_feature_set_name,
    choose_feature_set,
    gather_rows,
    is_hdf5,
    is_url,
    num_shards,
    shard_bounds,
)


@dataclass(frozen=True)
class ShardResult:
    """What a worker computed for one shard, in the shard's video order."""

    features: np.ndarray  # (n, T, P, D) float16
    frame_index: np.ndarray  # (n, T) int32
    num_frames: np.ndarray  # (n,) int32
    errors: list[str]  # "" where the video succeeded


def _zarr_store(location: str, *, read_only: bool) -> Any:
    """zarr's own store for a local path, a ``file://`` URL, or any fsspec URL (``s3://``, ...).

    Credentials and endpoint come from the usual environment and config files of the filesystem
    (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
    ``AWS_PROFILE``, ``~/.aws/config``), read by botocore itself.
    """
    if is_url(location) and not location.startswith("file://"):
        try:
            # fsspec keeps one filesystem per set of options for the whole process, and its
            # listings cache would hide, forever, a feature set created after the first look.
            return zarr.storage.FsspecStore.from_url(
                location, read_only=read_only, storage_options={"use_listings_cache": False}
            )
        except ImportError as error:
            raise FeatureStoreError(
                f"cannot open store {location}: {error} (install the extra: pip install 'sact[s3]')"
            ) from error
        except ValueError as error:
            raise FeatureStoreError(f"cannot open store {location}: {error}") from error
    return zarr.storage.LocalStore(location.removeprefix("file://"), read_only=read_only)


def _open_group(store: Any, *, read_only: bool) -> zarr.Group:
    if read_only:
        return zarr.open_group(store=store, mode="r")
    try:
        # A new root is written with its sact attrs in the same zarr.json: zarr checks that no
        # group exists, then writes, so a process racing this one may overwrite our zarr.json
        # with its own, which then holds the attrs too (never a root that lost them).
        return zarr.open_group(
            store=store, mode="a", attributes={"sact": {"format": FORMAT_VERSION}}
        )
    except zarr.errors.ContainsGroupError:
        # zarr checked that no group existed, then another process created one before zarr
        # wrote its own: open that one.
        return zarr.open_group(store=store, mode="r+")


def require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """``parent.require_group(name)``, also when another process creates that group meanwhile."""
    try:
        return parent.require_group(name)
    except zarr.errors.ContainsGroupError:
        # zarr saw no group, then another process created it before zarr's own write.
        return parent[name]


def open_root(location: str, *, mode: Literal["r", "a"]) -> zarr.Group:
    """Open (or, with mode "a", create) the store's root group at a local path or fsspec URL.

    With mode "r" nothing is ever written, so a store whose files are read-only, or a bucket the
    reader may only GET from, works for reading.
    """
    if is_hdf5(location):
        raise FeatureStoreError(
            f"{location} is an HDF5 copy of a store: it is read-only; extract into a .zarr store"
            if mode == "a"
            else f"{location} is an HDF5 file, not a zarr store"
        )
    read_only = mode == "r"
    store = _zarr_store(location, read_only=read_only)
    try:
        root = _open_group(store, read_only=read_only)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise FeatureStoreError(f"no feature store at {location}") from error
    except zarr.errors.ContainsArrayError as error:
        raise FeatureStoreError(f"{location} holds a zarr array, not a feature store") from error
    except PermissionError as error:
        raise FeatureStoreError(f"no permission to open store {location}: {error}") from error
    except Exception as error:
        if is_storage_error(error):  # object storage: bad bucket, endpoint or credentials
            raise FeatureStoreError(f"cannot open store {location}: {error}") from error
        raise
    sact_attrs = root.attrs.get("sact")
    if sact_attrs is None and not read_only and len(list(root.keys())) > 0:
        # Another process (a torchrun rank, a second run) may have created the store since we
        # read its metadata: read it again before calling it foreign.
        root = zarr.open_group(store=store, mode="r+")
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
    # The name rule keeps out the claims folder (.sact-claims) and anything else not ours.
    return sorted(name for name, _ in root.groups() if FEATURE_SET_NAME.match(name))


def finished_feature_set_names(root: zarr.Group) -> list[str]:
    """The feature sets a reader may open: those whose creation finished (they have attrs)."""
    return [name for name in feature_set_names(root) if "sact" in root[name].attrs]


def zarr_feature_set_names(location: str) -> list[str]:
    return finished_feature_set_names(open_root(location, mode="r"))


def open_zarr_feature_set(location: str, name: str | None = None) -> ZarrFeatureSet:
    root = open_root(location, mode="r")
    chosen = choose_feature_set(location, finished_feature_set_names(root), name)
    return ZarrFeatureSet(root[chosen], location=location)


def _local_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += (Path(folder) / name).stat().st_size
    return total


class ZarrFeatureSet(FeatureSet):
    """A feature set in a zarr store: a local path, a ``file://`` URL or any fsspec URL."""

    def __init__(self, group: zarr.Group, *, location: str) -> None:
        attrs = group.attrs.get("sact")
        if attrs is None or FEATURES not in group:
            raise FeatureStoreError(f"{group.name} is not a sact feature set")
        self.group = group
        self.features: zarr.Array = group[FEATURES]
        super().__init__(
            group, dict(attrs), name=group.basename, location=location, shape=self.features.shape
        )

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return gather_rows(self.features, indices, dtype=np.float16)

    def size_bytes(self) -> int | None:
        """Its files on disk, or its objects under an fsspec URL (None where that fails)."""
        if not is_url(self.location) or self.location.startswith("file://"):
            return _local_size(Path(self.location.removeprefix("file://")) / self.name)
        try:
            import fsspec

            filesystem, root = fsspec.core.url_to_fs(self.location)
            return int(filesystem.du(f"{root.rstrip('/')}/{self.name}"))
        except (ImportError, OSError, ValueError):
            return None


def comparable_identities(
    attrs: dict[str, Any], wanted: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A feature set's stored identity and the ``wanted`` one, as far as they can be compared.

    A key that joined the identity after the set was written (``compute_dtype`` did) is read from
    what the set recorded as provenance, and left out when it recorded nothing: a feature set
    keeps opening for the config that wrote it.
    """
    stored = {key: attrs[key] for key in attrs["identity"]}
    stored |= {key: attrs[key] for key in wanted.keys() - stored.keys() if key in attrs}
    return stored, {key: value for key, value in wanted.items() if key in stored}


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
        self.features: zarr.Array = group[FEATURES]
        self.shard_size = int(self.features.shards[0])

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
            writer = cls(root[name])
            differences = _differences(*comparable_identities(writer.group.attrs["sact"], identity))
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
        return as_text(self.group["video_id"][:])

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
        self.features = self.group[FEATURES]
        self._write_records(start, new)
        return len(new)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def num_shards(self) -> int:
        return num_shards(len(self), self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        return shard_bounds(shard, shard_size=self.shard_size, videos=len(self))

    def shards_to_do(self, *, retry_failed: bool = True) -> list[int]:
        """Shards with a video not done yet, or (``retry_failed``) with a video that failed."""
        done = np.asarray(self.group["done"][:], dtype=bool)
        needs_work = ~done
        if retry_failed:
            needs_work |= np.array([e != "" for e in as_text(self.group["error"][:])], dtype=bool)
        return sorted({int(index) // self.shard_size for index in np.flatnonzero(needs_work)})

    def shard_needs_work(self, shard: int, *, retry_failed: bool = True) -> bool:
        """Whether ``shard`` still has a video not done (or, ``retry_failed``, one that failed),
        read fresh from the store: another run may have finished it since ``shards_to_do``."""
        start, end = self.shard_bounds(shard)
        if not np.all(self.group["done"][start:end]):
            return True
        errors = as_text(self.group["error"][start:end])
        return retry_failed and any(error != "" for error in errors)

    def records(self, shard: int) -> list[VideoRecord]:
        start, end = self.shard_bounds(shard)
        ids = as_text(self.group["video_id"][start:end])
        paths = as_text(self.group["path"][start:end])
        labels = as_text(self.group["label"][start:end])
        return [VideoRecord(*fields) for fields in zip(ids, paths, labels, strict=True)]

    def write_shard(self, shard: int, result: ShardResult) -> None:
        """Write one shard's arrays, each in one call, then its commit markers.

        Videos of the shard that are already done without an error keep their stored values
        bitwise (a partly filled last shard that grew, or a shard redone for one failed video):
        their stored rows replace the recomputed ones before the write.
        """
        start, end = self.shard_bounds(shard)
        count = end - start
        if result.features.shape[0] != count or len(result.errors) != count:
            raise ValueError(f"shard {shard} holds {count} videos, got {result.features.shape[0]}")
        done = self.group["done"]
        was_done = np.asarray(done[start:end], dtype=bool)
        stored_errors = as_text(self.group["error"][start:end])
        keep = was_done & np.array([error == "" for error in stored_errors], dtype=bool)
        features = result.features.astype(np.float16, copy=True)
        frame_index = result.frame_index.astype(np.int32, copy=True)
        num_frames = result.num_frames.astype(np.int32, copy=True)
        errors = np.array(result.errors, dtype=object)
        if keep.any():
            features[keep] = self.features[start:end][keep]
            frame_index[keep] = self.group["frame_index"][start:end][keep]
            num_frames[keep] = self.group["num_frames"][start:end][keep]
            errors[keep] = ""
        # Videos being redone are first marked not done, so a kill in the middle of the rewrite
        # leaves them pending rather than done with mixed contents.
        if np.any(was_done & ~keep):
            done[start:end] = keep
        self.features[start:end] = features
        self.group["frame_index"][start:end] = frame_index
        self.group["num_frames"][start:end] = num_frames
        self.group["error"][start:end] = errors
        done[start:end] = np.ones(count, dtype=bool)
