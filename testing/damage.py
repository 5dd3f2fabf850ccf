"""Damage a stored chunk the way a bad disk or a bad copy would: one flipped byte. For the
checksum tests (tests/test_store_format.py) and the fault-injection suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sact.store.feature_set import CANONICAL, FEATURES, VIEWS

SHARD_INDEX_ENTRY = 16  # bytes per inner chunk in a shard index: offset and length, uint64 each
CRC32C_BYTES = 4


def chunk_file(array: Path, shard: int) -> Path:
    """The file of a shard's chunk in a local zarr array: ``c/<shard>/0/...``."""
    path = array / "c" / str(shard)
    while path.is_dir():
        path = path / "0"
    return path


def flip_byte(
    store: Path, feature_set: str, row: int, *, view: str = CANONICAL, array: str = FEATURES
) -> Path:
    """Flip one byte in the middle of video ``row``'s features chunk (for another array, of the
    chunk holding ``row``) in a local store; returns the file changed."""
    folder = store / feature_set if view == CANONICAL else store / feature_set / VIEWS / view
    stored = folder / array
    grid = json.loads((stored / "zarr.json").read_text())["chunk_grid"]
    shard_size = int(grid["configuration"]["chunk_shape"][0])  # videos per file
    path = chunk_file(stored, row // shard_size)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if array == FEATURES:
        # the shard index at the end: (offset, length) per inner chunk, then its own crc32c
        index_bytes = shard_size * SHARD_INDEX_ENTRY
        index = np.frombuffer(bytes(data[-(index_bytes + CRC32C_BYTES) : -CRC32C_BYTES]), "<u8")
        offset, length = index.reshape(shard_size, 2)[row % shard_size]
        middle = int(offset + length // 2)
    data[middle] ^= 0x40
    path.write_bytes(bytes(data))
    return path
