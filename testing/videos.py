"""Small synthetic videos for tests and benchmarks, encoded with PyAV: clips whose frames differ
clearly from their neighbours even after lossy compression, a frame folder, and one file for each
way a video can be broken."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from sact.demo.synthetic import encode_video

HEIGHT, WIDTH = 48, 64


def synthetic_frames(
    count: int, *, seed: int, height: int = HEIGHT, width: int = WIDTH
) -> np.ndarray:
    """(count, H, W, 3) uint8: a smooth colour field and a bright square that moves every frame,
    so each frame differs clearly from its neighbours even after lossy compression."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=3)
    rows, cols = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        for channel in range(3):
            frames[t, :, :, channel] = (base[channel] + rows * (channel + 1) + cols + 5 * t) % 200
        left = (7 * t) % (width - 12)
        frames[t, 8:20, left : left + 12] = 255
    return frames


def write_frame_folder(folder: Path, frames: np.ndarray) -> Path:
    """``folder/00001.jpg, 00002.jpg, ...``: the TRX/STRM frame-folder layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("flac", rate=8000)
        for index in range(3):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 8000, index * 800
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_zero_frames(path: Path) -> Path:
    """A matroska file with a video stream header and not a single frame."""
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()  # writes the header even though no frame follows
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt_files(folder: Path) -> dict[str, Path]:
    """One file per way a video can be broken, keyed by what is wrong with it."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = encode_video(folder / "whole.mp4", synthetic_frames(12, seed=99)).read_bytes()
    (folder / "whole.mp4").unlink()
    files = {
        "empty": folder / "empty.mp4",
        "truncated": folder / "truncated.mp4",
        "not_a_video": folder / "not_a_video.mp4",
        "audio_only": write_audio_only(folder / "audio_only.mkv"),
        "zero_frames": write_zero_frames(folder / "zero_frames.mkv"),
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["not_a_video"].write_text("this is a text file, not a video\n")
    return files


# Frames per video of `write_video_folder`, by relative path.
VIDEO_FRAMES = {
    "juggling/j1.mp4": 12,
    "juggling/j2.webm": 10,
    "juggling/short.mp4": 3,
    "riding bike/r1.mp4": 16,
    "riding bike/r2": 6,
}


def write_video_folder(root: Path) -> Path:
    """Two class folders (one name with a space) holding ``VIDEO_FRAMES``: h264 mp4, vp9 webm, a
    3-frame clip, and a frame folder."""
    for seed, (relative, count) in enumerate(VIDEO_FRAMES.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = synthetic_frames(count, seed=seed)
        if path.suffix:
            encode_video(path, frames)
        else:
            write_frame_folder(path, frames)
    return root
