"""What `sact info STORE` shows: each feature set's config, provenance, progress and size."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sact.extract.store import (
    FeatureSet,
    feature_set_names,
    is_hdf5,
    is_url,
    list_feature_sets,
    open_feature_set,
    open_root,
)


@dataclass
class FeatureSetInfo:
    name: str
    shape: list[int]  # (N, T, P, D)
    counts: dict[str, int]  # videos, done, failed, pending
    size_bytes: int | None  # None where the store cannot say (some object stores)
    attrs: dict[str, Any]  # identity and provenance, as stored
    failures: list[dict[str, str]] = field(default_factory=list)  # video_id, path, reason


@dataclass
class StoreInventory:
    location: str
    feature_sets: list[FeatureSetInfo]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _local_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            total += (Path(folder) / name).stat().st_size
    return total


def feature_set_size(location: str, name: str) -> int | None:
    """Bytes the feature set takes: its files on disk, or its objects under an fsspec URL."""
    if not is_url(location) or location.startswith("file://"):
        return _local_size(Path(location.removeprefix("file://")) / name)
    try:
        import fsspec

        filesystem, root = fsspec.core.url_to_fs(location)
        return int(filesystem.du(f"{root.rstrip('/')}/{name}"))
    except (ImportError, OSError, ValueError):
        return None


def describe(feature_set: FeatureSet, *, size_bytes: int | None) -> FeatureSetInfo:
    failures = [
        {"video_id": video_id, "path": path, "reason": error}
        for video_id, path, error, done in zip(
            feature_set.video_ids,
            feature_set.paths,
            feature_set.errors,
            feature_set.done,
            strict=True,
        )
        if done and error
    ]
    return FeatureSetInfo(
        name=feature_set.name,
        shape=[int(n) for n in feature_set.features.shape],
        counts=feature_set.counts(),
        size_bytes=size_bytes,
        attrs=feature_set.attrs,
        failures=failures,
    )


def inventory(location: str) -> StoreInventory:
    """Open the store read-only and describe every feature set in it."""
    if is_hdf5(location):  # an HDF5 copy made by `sact export`
        from sact.extract.hdf5 import hdf5_feature_set_size

        infos = [
            describe(
                open_feature_set(location, name), size_bytes=hdf5_feature_set_size(location, name)
            )
            for name in list_feature_sets(location)
        ]
        return StoreInventory(location=location, feature_sets=infos)
    root = open_root(location, mode="r")
    infos = []
    for name in feature_set_names(root):
        group = root[name]
        if "sact" not in group.attrs:
            continue  # a feature set whose creation was interrupted: nothing in it yet
        feature_set = FeatureSet(group, location=location)  # type: ignore[arg-type]
        infos.append(describe(feature_set, size_bytes=feature_set_size(location, name)))
    return StoreInventory(location=location, feature_sets=infos)
