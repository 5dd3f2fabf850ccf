"""The zarr v3 feature store that `sact extract` writes: its reader and its writer.

Format 2 (docs/STORE.md): a zarr v3 group whose attrs hold ``{"sact": {"format": 2}}``, with one
subgroup per feature set (one extraction config). Inside a feature set, the canonical view (segment
centers, center crop) exactly as in format 1:

    features    (N, T, P, D) float16  chunk = 1 video, shard = S videos
    frame_index (N, T) int32          which source frames were sampled
    num_frames  (N,) int32            frames the source video has
    video_id, path, label, error  (N,) str
    done        (N,) bool             commit markers, written last, one chunk per shard

and, in ``views/<name>/``, each augmented view (extract/views.py) with its own ``features``,
``frame_index``, ``crop_origin``, ``error`` and ``done``. Every chunk of a format-2 array ends with
a crc32c checksum, so a damaged chunk is detected on read instead of being trained on. A format-1
store (no views, no checksums) reads as a format-2 store without views.

The shard is the unit of work, of writing and of resume, per view: a shard's arrays are written in
one call each, then its ``done`` chunk. A run killed at any moment leaves either a done shard or one
that the next run redoes. Every chunk write is atomic on local disk (zarr writes a temporary file
and renames it) and on object storage (a PUT is atomic), so a reader never sees half a chunk.
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
from zarr.codecs import Crc32cCodec, ZstdCodec

from sact.common.errors import is_storage_error
from sact.store.feature_set import (
    CANONICAL,
    FEATURE_SET_NAME,
    FEATURES,
    FORMAT_VERSION,
    PER_VIDEO_ARRAYS,
    READABLE_FORMATS,
    RECORD_ARRAYS,
    VIEW_ARRAYS,
    VIEWS,
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

# Chunk codecs of format 2 (bench/chunk_codecs.py, bench/RESULTS.md): zstd at level 1, as small as
# format 1's level 3 on post-ReLU features and twice as fast to write; then a crc32c of the
# compressed chunk, checked on every read.
FEATURE_CODECS = (ZstdCodec(level=1), Crc32cCodec())
SMALL_ARRAY_CODECS = (ZstdCodec(level=1), Crc32cCodec())


@dataclass(frozen=True)
class ShardResult:
    """What a worker computed for one shard, in the shard's video order."""

    features: np.ndarray  # (n, T, P, D) float16
    frame_index: np.ndarray  # (n, T) int32
    num_frames: np.ndarray  # (n,) int32
    errors: list[str]  # "" where the video succeeded
    crop_origin: np.ndarray | None = None  # (n, 2) int32 (top, left); augmented views only


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
    elif sact_attrs.get("format") not in READABLE_FORMATS:
        raise FeatureStoreError(
            f"{location} has store format {sact_attrs.get('format')!r}; this sact reads formats "
            + ", ".join(str(version) for version in READABLE_FORMATS)
        )
    elif sact_attrs.get("format") != FORMAT_VERSION and not read_only:
        # Format 2 adds to format 1 (views, checksums in new arrays) without changing what is
        # there, so writing into a format-1 store only raises its version.
        root.attrs["sact"] = {**sact_attrs, "format": FORMAT_VERSION}
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


def view_groups(group: zarr.Group) -> dict[str, zarr.Group]:
    """The augmented views of a feature set whose creation finished, by name."""
    if VIEWS not in group:
        return {}
    views: zarr.Group = group[VIEWS]
    return {
        name: view
        for name, view in sorted(views.groups())
        if "sact" in view.attrs and FEATURE_SET_NAME.match(name)
    }


class ZarrFeatureSet(FeatureSet):
    """A feature set in a zarr store: a local path, a ``file://`` URL or any fsspec URL."""

    def __init__(self, group: zarr.Group, *, location: str) -> None:
        attrs = group.attrs.get("sact")
        if attrs is None or FEATURES not in group:
            raise FeatureStoreError(f"{group.name} is not a sact feature set")
        self.group = group
        views = {
            name: (view, dict(view.attrs["sact"])) for name, view in view_groups(group).items()
        }
        super().__init__(group, dict(attrs), name=group.basename, location=location, views=views)

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


# Keys that joined the identity later, with the value every feature set written before them had:
# every video was decoded by PyAV until the decoder became a choice (issue 22).
IDENTITY_BEFORE_RECORDED = {"decoder": "pyav"}


def comparable_identities(
    attrs: dict[str, Any], wanted: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A feature set's stored identity and the ``wanted`` one, as far as they can be compared.

    A key that joined the identity after the set was written (``compute_dtype`` did) is read from
    what the set recorded as provenance, else it has the value every set had before it joined
    (``IDENTITY_BEFORE_RECORDED``), else it is left out: a feature set keeps opening for the
    config that wrote it, and only for that one where the key says so (a set written before
    the decoder was recorded resumes with PyAV, and refuses another decoder).
    """
    stored = {key: attrs[key] for key in attrs["identity"]}
    for key in wanted.keys() - stored.keys():
        if key in attrs:
            stored[key] = attrs[key]
        elif key in IDENTITY_BEFORE_RECORDED:
            stored[key] = IDENTITY_BEFORE_RECORDED[key]
    return stored, {key: value for key, value in wanted.items() if key in stored}


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [
        f"{key}: stored {stored.get(key)!r}, asked {wanted.get(key)!r}"
        for key in keys
        if stored.get(key) != wanted.get(key)
    ]


def _create_arrays(
    group: zarr.Group,
    names: Sequence[str],
    *,
    count: int,
    frames: int,
    patches: int,
    dim: int,
    shard_size: int,
    feature_codecs: Sequence[Any],
) -> None:
    """Create the named arrays of a view (or of the canonical feature set) for ``count`` videos:
    features chunked one video per chunk in shards of ``shard_size``, the rest one shard per
    chunk; every chunk checksummed (crc32c)."""
    video = ["video"]
    by_shard = {"chunks": (shard_size,), "compressors": SMALL_ARRAY_CODECS}
    definitions: dict[str, dict[str, Any]] = {
        FEATURES: {
            "shape": (count, frames, patches, dim),
            "dtype": "float16",
            "chunks": (1, frames, patches, dim),
            "shards": (shard_size, frames, patches, dim),
            "fill_value": 0,
            "dimension_names": [*video, "frame", "patch", "channel"],
            "compressors": feature_codecs,
        },
        "frame_index": {
            "shape": (count, frames),
            "dtype": "int32",
            "chunks": (shard_size, frames),
            "fill_value": -1,
            "dimension_names": [*video, "frame"],
            "compressors": SMALL_ARRAY_CODECS,
        },
        "crop_origin": {  # (top, left) of the crop in the resized frames
            "shape": (count, 2),
            "dtype": "int32",
            "chunks": (shard_size, 2),
            "fill_value": -1,
            "dimension_names": [*video, "axis"],
            "compressors": SMALL_ARRAY_CODECS,
        },
        "num_frames": {"dtype": "int32", "fill_value": 0, **by_shard},
        "done": {"dtype": bool, "fill_value": False, **by_shard},
        **{
            name: {"dtype": str, "fill_value": "", **by_shard} for name in (*RECORD_ARRAYS, "error")
        },
    }
    for name in names:
        definition = {"shape": (count,), "dimension_names": video, **definitions[name]}
        group.create_array(name, **definition)


class FeatureSetWriter:
    """Write access to one view of a feature set (by default the canonical one), shard by shard.

    ``identity`` is everything that decides the features' values (backbone, weights hash, input
    size, frames, grid, ...). Opening an existing feature set with a different identity is refused:
    its features would silently mix two configs. Augmented views are added with ``add_view``; each
    has its own done markers, so it is extracted, resumed and shared between runs on its own.
    """

    def __init__(self, group: zarr.Group, *, view: str = CANONICAL) -> None:
        self.group = group  # the feature set
        self.view = view
        # the group holding this view's arrays
        target = group if view == CANONICAL else group[VIEWS][view]
        self.target: zarr.Group = target
        self.features: zarr.Array = self.target[FEATURES]
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
        feature_codecs: Sequence[Any] = FEATURE_CODECS,
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
        _create_arrays(
            group,
            (FEATURES, *PER_VIDEO_ARRAYS),
            count=len(videos),
            frames=frames,
            patches=patches,
            dim=dim,
            shard_size=shard_size,
            feature_codecs=feature_codecs,
        )
        writer = cls(group)
        writer._write_records(0, videos)
        # The attrs go last: a group without them is not yet a feature set (FeatureSet refuses it).
        group.attrs["sact"] = attrs
        return writer

    @property
    def identity(self) -> dict[str, Any]:
        attrs = self.group.attrs["sact"]
        return {key: attrs[key] for key in attrs["identity"]}

    def set_attr(self, key: str, value: Any) -> None:
        """Set one provenance entry of the feature set's attrs (never an identity key: those
        decide the stored values); the other entries are kept."""
        attrs = dict(self.group.attrs["sact"])
        if key in attrs["identity"]:
            raise ValueError(f"{key} is part of the identity of feature set {self.group.basename}")
        self.group.attrs["sact"] = {**attrs, key: value}

    # ---- views ----

    def view_names(self) -> list[str]:
        """The augmented views whose creation finished, by name."""
        if VIEWS not in self.group:
            return []
        views: zarr.Group = self.group[VIEWS]
        return sorted(name for name, group in views.groups() if "sact" in group.attrs)

    def add_view(
        self, name: str, *, spec: dict[str, Any], provenance: dict[str, Any]
    ) -> FeatureSetWriter:
        """The writer of view ``name``, created (empty, all pending) if the feature set does not
        hold it yet. Creating a view writes new arrays only: no chunk of the canonical view or of
        another view is touched. ``spec`` (extract/views.py) must match a stored view's."""
        check_feature_set_name(name)
        views = require_group(self.group, VIEWS)
        if name in views:
            stored = views[name].attrs.get("sact")
            if stored is not None:
                if stored.get("view") != spec:
                    raise FeatureStoreError(
                        f"view {name!r} of feature set {self.group.basename} was stored as "
                        f"{stored.get('view')}, asked {spec}"
                    )
                return FeatureSetWriter(self.group, view=name)
            del views[name]  # its creation was interrupted: nothing was extracted into it yet
        group = views.create_group(name)
        count, frames, patches, dim = self.features.shape
        _create_arrays(
            group,
            (FEATURES, *VIEW_ARRAYS),
            count=count,
            frames=frames,
            patches=patches,
            dim=dim,
            shard_size=self.shard_size,
            feature_codecs=FEATURE_CODECS,
        )
        group.attrs["sact"] = {"view": spec, **provenance}  # last: now the view exists
        return FeatureSetWriter(self.group, view=name)

    # ---- videos ----

    def _write_records(self, start: int, videos: Sequence[VideoRecord]) -> None:
        end = start + len(videos)
        self.group["video_id"][start:end] = np.array([v.video_id for v in videos], dtype=object)
        self.group["path"][start:end] = np.array([v.path for v in videos], dtype=object)
        self.group["label"][start:end] = np.array([v.label for v in videos], dtype=object)

    def video_ids(self) -> list[str]:
        return as_text(self.group["video_id"][:])

    def append(self, videos: Iterable[VideoRecord]) -> int:
        """Add the videos this feature set does not hold yet, to every view; done shards stay
        untouched."""
        known = set(self.video_ids())
        new = [video for video in videos if video.video_id not in known]
        if not new:
            return 0
        start = self.features.shape[0]
        end = start + len(new)
        arrays = [self.group[name] for name in (FEATURES, *PER_VIDEO_ARRAYS)]
        for view in self.view_names():
            arrays += [self.group[VIEWS][view][name] for name in (FEATURES, *VIEW_ARRAYS)]
        for array in arrays:
            array.resize((end, *array.shape[1:]))
        self.features = self.target[FEATURES]
        self._write_records(start, new)
        return len(new)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def num_shards(self) -> int:
        return num_shards(len(self), self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        return shard_bounds(shard, shard_size=self.shard_size, videos=len(self))

    def shards_to_do(self, *, retry_failed: bool = True) -> list[int]:
        """Shards of this view with a video not done yet, or (``retry_failed``) with a video
        that failed."""
        done = np.asarray(self.target["done"][:], dtype=bool)
        needs_work = ~done
        if retry_failed:
            needs_work |= np.array([e != "" for e in as_text(self.target["error"][:])], dtype=bool)
        return sorted({int(index) // self.shard_size for index in np.flatnonzero(needs_work)})

    def shard_needs_work(self, shard: int, *, retry_failed: bool = True) -> bool:
        """Whether ``shard`` still has a video not done (or, ``retry_failed``, one that failed),
        read fresh from the store: another run may have finished it since ``shards_to_do``."""
        start, end = self.shard_bounds(shard)
        if not np.all(self.target["done"][start:end]):
            return True
        errors = as_text(self.target["error"][start:end])
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
        bitwise (a partly filled last shard that grew, or a shard redone for one failed or
        damaged video): their stored rows replace the recomputed ones before the write. Only
        those rows are read, so a damaged chunk marked for redo is never read again.
        """
        start, end = self.shard_bounds(shard)
        count = end - start
        if result.features.shape[0] != count or len(result.errors) != count:
            raise ValueError(f"shard {shard} holds {count} videos, got {result.features.shape[0]}")
        target = self.target
        done = target["done"]
        was_done = np.asarray(done[start:end], dtype=bool)
        stored_errors = as_text(target["error"][start:end])
        keep = was_done & np.array([error == "" for error in stored_errors], dtype=bool)
        features = result.features.astype(np.float16, copy=True)
        errors = np.array(result.errors, dtype=object)
        per_video = {"frame_index": result.frame_index.astype(np.int32, copy=True)}
        if self.view == CANONICAL:
            per_video["num_frames"] = result.num_frames.astype(np.int32, copy=True)
        else:
            if result.crop_origin is None:
                raise ValueError(f"view {self.view}: shard {shard} comes without crop origins")
            per_video["crop_origin"] = result.crop_origin.astype(np.int32, copy=True)
        if keep.any():
            kept = np.flatnonzero(keep)
            features[kept] = gather_rows(self.features, start + kept, dtype=np.float16)
            for name, values in per_video.items():
                values[kept] = np.asarray(target[name][start:end])[kept]
            errors[kept] = ""
        # Videos being redone are first marked not done, so a kill in the middle of the rewrite
        # leaves them pending rather than done with mixed contents.
        if np.any(was_done & ~keep):
            done[start:end] = keep
        self.features[start:end] = features
        for name, values in per_video.items():
            target[name][start:end] = values
        target["error"][start:end] = errors
        done[start:end] = np.ones(count, dtype=bool)
