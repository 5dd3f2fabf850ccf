"""Encode frames into real video files with PyAV: for tests, benchmarks and the demo dataset."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264", ".avi": "mpeg4"}
CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".mkv": "matroska", ".avi": "avi"}


def encode_video(path: Path, frames: np.ndarray, *, fps: int = 12) -> Path:
    """Write ``frames`` (T, H, W, 3) uint8 RGB to ``path``; the codec follows the suffix.

    H and W must be even (yuv420p). The file is written next to its final name and renamed, so a
    killed run never leaves a half-written video behind.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    codec = CODECS.get(path.suffix)
    if codec is None:
        raise ValueError(f"no codec for {path.suffix!r}; use one of {', '.join(CODECS)}")
    _, height, width, _ = frames.shape
    partial = path.with_name(f".{path.name}.partial")
    with av.open(str(partial), mode="w", format=CONTAINERS[path.suffix]) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)
    return path
