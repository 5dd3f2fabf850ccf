"""The feature store: the one contract between stage 1 (which writes it) and stage 2 (which reads
it), and the store's own commands (`sact info`, `--verify`, `sact export`).

    backends.py     open a feature set from a location (zarr path or URL, or an HDF5 copy)
    feature_set.py  the read interface and the format's names and limits
    zarr_store.py   the zarr v3 store: layout, writing a shard, reading
    hdf5.py         the read-only HDF5 copy (`sact export`)
    sampling.py     which frames of a video are stored: the rule both stages sample by
    inventory.py    what a store holds (`sact info`);  verify.py: every chunk read (`--verify`)

The format is docs/STORE.md.
"""
