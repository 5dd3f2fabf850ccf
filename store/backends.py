"""The feature store: the one contract between stage 1 (writes) and stage 2 (reads).

Stage 2 opens a feature set here and reads it through the ``FeatureSet`` interface
(store/feature_set.py); the location picks the backend:

    feats.zarr, file://..., s3://...   store/zarr_store.py  (what `sact extract` writes)
    feats.h5, feats.hdf5               store/hdf5.py        (a read-only copy, `sact export`)

The format is docs/STORE.md.
"""

from __future__ import annotations

from sact.store.feature_set import FeatureSet, is_hdf5
from sact.store.zarr_store import open_zarr_feature_set, zarr_feature_set_names

__all__ = ["FeatureSet", "list_feature_sets", "open_feature_set"]


def list_feature_sets(location: str) -> list[str]:
    """Names of the feature sets in a store: a zarr store (path or URL) or an HDF5 copy."""
    if is_hdf5(location):
        from sact.store.hdf5 import hdf5_feature_set_names  # h5py only for HDF5 copies

        return hdf5_feature_set_names(location)
    return zarr_feature_set_names(location)


def open_feature_set(location: str, name: str | None = None) -> FeatureSet:
    """Open a feature set read-only; ``name`` may be omitted when the store holds exactly one.

    ``location`` is a zarr store (local path or fsspec URL such as ``s3://bucket/feats.zarr``) or
    an HDF5 copy made by ``sact export`` (``.h5``).
    """
    if is_hdf5(location):
        from sact.store.hdf5 import open_hdf5_feature_set  # h5py only for HDF5 copies

        return open_hdf5_feature_set(location, name)
    return open_zarr_feature_set(location, name)
