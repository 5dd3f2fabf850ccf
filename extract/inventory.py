"""What `sact info STORE` shows: each feature set's config, provenance, progress and size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sact.extract.store import FeatureSet, list_feature_sets, open_feature_set


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


def describe(feature_set: FeatureSet) -> FeatureSetInfo:
    return FeatureSetInfo(
        name=feature_set.name,
        shape=list(feature_set.shape),
        counts=feature_set.counts(),
        size_bytes=feature_set.size_bytes(),
        attrs=feature_set.attrs,
        failures=[asdict(failure) for failure in feature_set.failures()],
    )


def inventory(location: str) -> StoreInventory:
    """Open the store (zarr or an HDF5 copy) read-only and describe every feature set in it."""
    infos = [describe(open_feature_set(location, name)) for name in list_feature_sets(location)]
    return StoreInventory(location=location, feature_sets=infos)
