"""A store in format 1, written with plain zarr exactly as sact 0.1 (format 1) wrote it: the root
attrs say format 1, and every array has zarr's default codecs (zstd, no checksum). Independent of
today's writer, so the format-1 tests keep testing format 1 whatever the writer becomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

FRAMES, PATCHES, DIM, GRID, SHARD = 4, 4, 8, (2, 2), 4


def write_format1_store(location: Path, *, videos: int = 6, failed: int = 2) -> dict[str, object]:
    """One feature set "old" of ``videos`` videos, video ``failed`` recorded as failed; returns
    what was written, to compare reads against."""
    rng = np.random.default_rng(1)
    features = np.maximum(rng.standard_normal((videos, FRAMES, PATCHES, DIM)), 0).astype(np.float16)
    ids = [f"old{index}" for index in range(videos)]
    errors = ["" if index != failed else "cannot decode" for index in range(videos)]
    features[failed] = 0
    root = zarr.open_group(str(location), mode="w")
    root.attrs["sact"] = {"format": 1}
    group = root.create_group("old")
    group.create_array(
        "features",
        shape=features.shape,
        dtype="float16",
        chunks=(1, FRAMES, PATCHES, DIM),
        shards=(SHARD, FRAMES, PATCHES, DIM),
        fill_value=0,
        dimension_names=["video", "frame", "patch", "channel"],
    )[:] = features
    frame_index = np.tile(np.arange(FRAMES, dtype=np.int32) * 2, (videos, 1))
    group.create_array(
        "frame_index",
        shape=frame_index.shape,
        dtype="int32",
        chunks=(SHARD, FRAMES),
        fill_value=-1,
        dimension_names=["video", "frame"],
    )[:] = frame_index
    per_video = {
        "video_id": np.array(ids, dtype=object),
        "path": np.array(
            [f"c{i % 2}/{video_id}.mp4" for i, video_id in enumerate(ids)], dtype=object
        ),
        "label": np.array([f"c{i % 2}" for i in range(videos)], dtype=object),
        "error": np.array(errors, dtype=object),
        "num_frames": np.full(videos, 2 * FRAMES, dtype=np.int32),
        "done": np.ones(videos, dtype=bool),
    }
    for name, values in per_video.items():
        group.create_array(
            name,
            shape=(videos,),
            dtype=str if values.dtype == object else values.dtype,
            chunks=(SHARD,),
            fill_value="" if values.dtype == object else 0,
            dimension_names=["video"],
        )[:] = values
    group.attrs["sact"] = {
        "backbone": "format1-test",
        "frames": FRAMES,
        "dim": DIM,
        "grid": list(GRID),
        "shard_size": SHARD,
        "identity": ["backbone", "dim", "frames"],
    }
    return {"features": features, "video_ids": ids, "errors": errors, "frame_index": frame_index}
