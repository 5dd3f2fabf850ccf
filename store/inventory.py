"""What `sact info STORE` shows: each feature set's config, provenance, progress and size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sact.store.backends import FeatureSet, list_feature_sets, open_feature_set


@dataclass
class ViewInfo:
    name: str  # "canonical" or the augmented view's name (extract/views.py)
    spec: dict[str, Any]  # the view's spec; {} for the canonical view
    counts: dict[str, int]  # videos, done, failed, pending in this view
    size_bytes: int | None  # bytes of its features; None where the store cannot say


@dataclass
class FeatureSetInfo:
    name: str
    shape: list[int]  # (N, T, P, D)
    counts: dict[str, int]  # videos, done, failed, pending (canonical view)
    size_bytes: int | None  # None where the store cannot say (some object stores)
    attrs: dict[str, Any]  # identity and provenance, as stored
    failures: list[dict[str, str]] = field(default_factory=list)  # video_id, path, reason
    views: list[ViewInfo] = field(default_factory=list)  # the canonical view first


@dataclass
class StoreInventory:
    location: str
    feature_sets: list[FeatureSetInfo]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def features_size(features: Any) -> int | None:
    """Bytes a features array takes in its store: a zarr array or an h5py dataset."""
    try:
        if hasattr(features, "nbytes_stored"):
            return int(features.nbytes_stored())
        return int(features.id.get_storage_size())
    except (OSError, NotImplementedError):
        return None


def describe(feature_set: FeatureSet) -> FeatureSetInfo:
    return FeatureSetInfo(
        name=feature_set.name,
        shape=list(feature_set.shape),
        counts=feature_set.counts(),
        size_bytes=feature_set.size_bytes(),
        attrs=feature_set.attrs,
        failures=[asdict(failure) for failure in feature_set.failures()],
        views=[
            ViewInfo(
                name=name,
                spec=dict(view.attrs.get("view", {})),
                counts=feature_set.counts(name),
                size_bytes=features_size(view.features),
            )
            for name, view in feature_set.views.items()
        ],
    )


def inventory(location: str) -> StoreInventory:
    """Open the store (zarr or an HDF5 copy) read-only and describe every feature set in it."""
    infos = [describe(open_feature_set(location, name)) for name in list_feature_sets(location)]
    return StoreInventory(location=location, feature_sets=infos)
