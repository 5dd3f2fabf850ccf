"""HDF5 interchange: a store's feature sets as one ``.h5`` file, and a reader for it.

``sact export feats.zarr --to feats.h5`` writes the same arrays under the same names, with the same
attributes (JSON text, since HDF5 attributes hold no nested mappings), ``features`` chunked one
video per chunk like the zarr store. ``open_feature_set("feats.h5")`` reads it back as an
``HDF5FeatureSet`` (the ``FeatureSet`` interface, store/feature_set.py), so ``sact train``,
``evaluate`` and ``info`` take an HDF5 file wherever they take a store. An HDF5 copy is read-only
for sact: extraction always writes zarr.

    feats.h5                 attrs sact = the store's root attrs as JSON ('{"format": 2}')
      <feature-set>/         attrs sact = the feature set's attrs as JSON
        features (N, T, P, D) float16, chunk (1, T, P, D)
        frame_index, num_frames, done, video_id, path, label, error: as in the zarr store
        views/<view>/        attrs sact = the view's attrs as JSON
          features, frame_index, crop_origin, error, done: as in the zarr store
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.console import Console
from rich.progress import Progress

from sact.common.files import atomic_path
from sact.common.progress import progress_display
from sact.store.feature_set import (
    CANONICAL,
    FEATURE_SET_NAME,
    FEATURES,
    PER_VIDEO_ARRAYS,
    READABLE_FORMATS,
    VIEW_ARRAYS,
    VIEWS,
    FeatureSet,
    FeatureStoreError,
    choose_feature_set,
)
from sact.store.zarr_store import ZarrFeatureSet, feature_set_names, open_root

STRING_ARRAYS = ("video_id", "path", "label", "error")
DIMENSION_NAMES = {
    FEATURES: ["video", "frame", "patch", "channel"],
    "frame_index": ["video", "frame"],
    "crop_origin": ["video", "axis"],
}


def _file_attrs(handle: h5py.File | h5py.Group) -> dict[str, Any] | None:
    text = handle.attrs.get("sact")
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _open_file(path: str) -> h5py.File:
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise FeatureStoreError(f"no HDF5 file at {path}") from None
    except OSError as error:
        raise FeatureStoreError(f"cannot read {path} as HDF5: {error}") from None
    attrs = _file_attrs(handle)
    if attrs is None or attrs.get("format") not in READABLE_FORMATS:
        handle.close()
        raise FeatureStoreError(
            f"{path} is not a sact feature store in HDF5 (formats "
            + ", ".join(str(version) for version in READABLE_FORMATS)
            + "); make one with sact export"
        )
    return handle


def _names_in(handle: h5py.File) -> list[str]:
    return sorted(name for name, item in handle.items() if isinstance(item, h5py.Group))


def hdf5_feature_set_names(path: str) -> list[str]:
    with _open_file(path) as handle:
        return _names_in(handle)


def _view_groups(group: h5py.Group) -> list[tuple[str, h5py.Group, dict[str, Any]]]:
    """(name, group, attrs) of each augmented view in a feature set's group, by name."""
    if VIEWS not in group:
        return []
    found = []
    for name, view in sorted(group[VIEWS].items()):
        attrs = _file_attrs(view)
        if attrs is not None and FEATURE_SET_NAME.match(name):
            found.append((name, view, attrs))
    return found


class HDF5FeatureSet(FeatureSet):
    """A feature set read from an HDF5 copy.

    The file is opened read-only, and reopened in a child process (an HDF5 handle must not cross
    a fork, e.g. into a data-loader worker).
    """

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self._handle = _open_file(path)
        self._pid = os.getpid()
        group = self._handle[name]
        attrs = _file_attrs(group)
        if not isinstance(group, h5py.Group) or attrs is None or FEATURES not in group:
            raise FeatureStoreError(f"{name} in {path} is not a sact feature set")
        self.group = group
        views = {name: (view, view_attrs) for name, view, view_attrs in _view_groups(group)}
        super().__init__(group, attrs, name=name, location=path, views=views)

    def read(self, indices: Any, view: str = CANONICAL) -> np.ndarray:
        if os.getpid() != self._pid:
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self.group = self._handle[self.name]
            self.features = self.views[CANONICAL].features = self.group[FEATURES]
            for name, group, _ in _view_groups(self.group):
                self.views[name].features = group[FEATURES]
        return super().read(indices, view)

    def size_bytes(self) -> int:
        """Bytes the feature set's datasets take in the file, its views' included."""
        sizes: list[int] = []

        def add(_: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                sizes.append(int(item.id.get_storage_size()))

        self.group.visititems(add)
        return sum(sizes)

    def close(self) -> None:
        self._handle.close()


def open_hdf5_feature_set(path: str, name: str | None = None) -> HDF5FeatureSet:
    chosen = choose_feature_set(path, hdf5_feature_set_names(path), name)
    return HDF5FeatureSet(path, chosen)


def _create_dataset(group: h5py.Group, name: str, values: Any, *, chunks: tuple[int, ...]) -> Any:
    shape = values.shape
    if name in STRING_ARRAYS:
        dtype: Any = h5py.string_dtype("utf-8")
    else:
        dtype = values.dtype
    dataset = group.create_dataset(
        name,
        shape=shape,
        maxshape=(None, *shape[1:]),  # so a chunk may be longer than an empty or short array
        dtype=dtype,
        chunks=chunks,
    )
    dataset.attrs["dimension_names"] = json.dumps(DIMENSION_NAMES.get(name, ["video"]))
    return dataset


def export_hdf5(
    source: str,
    destination: Path,
    *,
    feature_sets: list[str] | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Copy the store's feature sets (all of them, or those named) into one HDF5 file.

    The file is written beside its final name and renamed when complete, so a killed export never
    leaves a partial ``.h5`` that looks whole. Returns a summary (one entry per feature set).
    """
    if destination.suffix.lower() not in (".h5", ".hdf5"):
        raise FeatureStoreError(f"--to {destination} must end in .h5 or .hdf5")
    if destination.exists() and not overwrite:
        raise FeatureStoreError(f"{destination} exists; pass --overwrite to replace it")
    root = open_root(source, mode="r")
    available = feature_set_names(root)
    names = feature_sets or available
    for name in names:
        choose_feature_set(source, available, name)
    if not names:
        raise FeatureStoreError(f"store {source} holds no feature set to export")
    summary: dict[str, Any] = {"source": source, "destination": str(destination), "sets": {}}
    progress = progress_display(console, label="export")
    with atomic_path(destination) as partial, h5py.File(partial, "w") as handle, progress:
        handle.attrs["sact"] = json.dumps(dict(root.attrs["sact"]))
        for name in names:
            summary["sets"][name] = _export_feature_set(
                ZarrFeatureSet(root[name], location=source),
                handle,
                progress,
            )
    return summary


def _copy_view(
    feature_set: FeatureSet,
    view: str,
    source: Any,
    destination: h5py.Group,
    arrays: tuple[str, ...],
    *,
    progress: Progress,
    task: Any,
) -> None:
    """Copy one view: its per-video ``arrays`` whole, then the features of its done videos one
    store shard at a time (bounded memory, each shard file read once), chunked one video per
    chunk. The features are read through ``FeatureSet.read``, so a damaged chunk stops the export
    in one line naming its video; a video not done is zeros, as in the store (docs/STORE.md)."""
    row_chunk = max(1, min(feature_set.shard_size, len(feature_set)))
    for name in arrays:
        values = np.asarray(source[name][:])
        if name in STRING_ARRAYS:
            values = values.astype(object)
        chunks = (row_chunk, *values.shape[1:])
        _create_dataset(destination, name, values, chunks=chunks)[...] = values
    features = source[FEATURES]
    copy = _create_dataset(destination, FEATURES, features, chunks=(1, *features.shape[1:]))
    done = feature_set.view(view).done
    for shard in range(feature_set.num_shards()):
        start, end = feature_set.shard_bounds(shard)
        rows = start + np.flatnonzero(done[start:end])
        if rows.size:
            copy[start:end] = _zeros_but(
                rows - start, feature_set.read(rows, view=view), end - start
            )
        progress.advance(task, end - start)


def _zeros_but(positions: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """(count, T, P, D) zeros holding ``rows`` at ``positions``."""
    block = np.zeros((count, *rows.shape[1:]), dtype=rows.dtype)
    block[positions] = rows
    return block


def _export_feature_set(feature_set: ZarrFeatureSet, handle: h5py.File, progress: Progress) -> dict:
    """The canonical view as in the store, then each augmented view under views/<name>."""
    group = handle.create_group(feature_set.name)
    group.attrs["sact"] = json.dumps(feature_set.attrs)
    views = [name for name in feature_set.view_names() if name != CANONICAL]
    task = progress.add_task(feature_set.name, total=len(feature_set) * (1 + len(views)))
    source = feature_set.group
    _copy_view(
        feature_set, CANONICAL, source, group, PER_VIDEO_ARRAYS, progress=progress, task=task
    )
    for name in views:
        view_group = group.require_group(VIEWS).create_group(name)
        view_group.attrs["sact"] = json.dumps(feature_set.views[name].attrs)
        view_source = source[VIEWS][name]
        _copy_view(
            feature_set, name, view_source, view_group, VIEW_ARRAYS, progress=progress, task=task
        )
    return {**feature_set.counts(), "views": views}
