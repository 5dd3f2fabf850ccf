"""Decode a video (or a frame folder) and sample T frames at segment centers.

Frame sampling: the rule of store/sampling.py, ``index_i = floor((i + 0.5) * n / T)``. The
indices are stored with the features, so nothing downstream has to guess.

Two ways to reach the frames, chosen per video:
- decode everything and keep T frames: exact for any video, and the faster one for short clips
  (a seek lands on the previous keyframe and decodes forward anyway);
- seek to each sampled frame's timestamp: used only when the container announces a long video,
  where decoding every frame would waste most of the work. It maps frame indices to timestamps,
  which assumes a constant frame rate; if a seek does not reach its frame the video falls back to
  decoding everything.

Per-video problems raise ``DecodeError`` with a one-line reason: the pipeline records it in the
store and carries on with the other videos. A header claiming frames larger than
``MAX_FRAME_PIXELS`` is refused before anything is decoded, so a corrupt or hostile file cannot
make a worker allocate gigabytes. Frames come out as a viewer sees them: a rotation tag (a phone
held upright) turns them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from sact.extract.videos import is_frame_file
from sact.store.sampling import segment_centers

# Seek only when decoding everything would decode more than this many frames per kept frame: below
# that, the keyframe interval of common encodes (~12 to 250 frames) makes seeking no cheaper.
SEEK_MIN_FRAMES_PER_SAMPLE = 64

Strategy = Literal["auto", "decode_all", "seek"]
# (frames the source has, T) -> the T source frames to keep: segment centers, or a view's rule
# (extract/views.py). Must be a pure function: it may be called twice for one video.
FrameRule = Callable[[int, int], np.ndarray]

# The largest frame sact decodes: 8192 x 8192, above 8K UHD (7680 x 4320). One RGB frame of this
# size is 192 MiB; a header claiming more is corrupt or hostile, not a dataset's video.
MAX_FRAME_PIXELS = 8192 * 8192
# A decoder's thread count that leaves the choice to FFmpeg (PyAV's default: slice threads, as
# many as cores).
AUTO_THREADS = 0


class DecodeError(Exception):
    """A video that cannot be decoded; ``str(error)`` is the reason stored for it."""


@dataclass(frozen=True)
class SampledClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int64, which source frames these are
    num_frames: int  # frames the source has


# ---- frame folders ----


def frame_files(folder: Path) -> list[Path]:
    """A frame folder's images in frame order (natural sort, so 2.jpg comes before 10.jpg)."""

    def natural(path: Path) -> list[int | str]:
        return [int(part) if part.isdigit() else part for part in _digit_runs(path.name)]

    return sorted((p for p in folder.iterdir() if is_frame_file(p)), key=natural)


def _digit_runs(name: str) -> list[str]:
    runs: list[str] = []
    for char in name:
        if runs and runs[-1][-1].isdigit() == char.isdigit():
            runs[-1] += char
        else:
            runs.append(char)
    return runs


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise DecodeError(f"unreadable frame {path.name}: {error}") from error


def _stack(frames: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise DecodeError(f"{where}: frames differ in size: {sorted(shapes)}")
    return np.stack(frames)  # (T, H, W, 3)


# ---- video files ----


def _reason(error: Exception) -> str:
    """av errors carry the file name in str(); the reason alone reads better in a table."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


# The first bytes of the containers datasets ship, to tell a damaged video from a file that is no
# video at all when FFmpeg cannot open either: (offset, bytes, container).
CONTAINER_SIGNATURES = (
    (4, b"ftyp", "MP4/QuickTime"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (8, b"AVI ", "AVI"),
    (0, b"FLV", "FLV"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream"),
)


def _container_of(path: Path) -> str | None:
    """The container the file's first bytes announce, if one of CONTAINER_SIGNATURES."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError:
        return None
    for offset, signature, container in CONTAINER_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return container
    return None


def open_video(
    path: Path, *, threads: int = AUTO_THREADS
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DecodeError(f"cannot read file: {_reason(error)}") from error
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except av.EOFError as error:
        raise DecodeError("no frames: the file ends right after its header") from error
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        announced = _container_of(path)
        if announced is not None:
            raise DecodeError(
                f"a damaged or truncated {announced} file: {_reason(error)}"
            ) from error
        raise DecodeError(f"not a readable video: {_reason(error)}") from error
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams})
        container.close()
        holds = f"only {', '.join(kinds)}" if kinds else "no streams, no frames"
        raise DecodeError(f"no video stream (the file holds {holds})")
    stream = container.streams.video[0]
    context = stream.codec_context
    if context is None:
        container.close()
        raise DecodeError("no decoder for its video stream: a codec FFmpeg does not know")
    if context.width * context.height > MAX_FRAME_PIXELS:
        container.close()
        raise DecodeError(
            f"its header claims frames of {context.width}x{context.height}, more than the "
            f"{MAX_FRAME_PIXELS} pixels sact decodes (8K is 7680x4320): not decoded"
        )
    if threads != AUTO_THREADS:
        context.thread_count = threads
    return container, stream


def _announced_frames(stream: av.video.stream.VideoStream) -> int:
    """Frames the container says the stream has (0 when it does not say)."""
    if stream.frames > 0:
        return int(stream.frames)
    if stream.duration is not None and stream.average_rate and stream.time_base:
        return int(float(stream.duration * stream.time_base) * float(stream.average_rate))
    return 0


def _decode_through(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> list[av.VideoFrame]:
    """Every frame of ``stream`` from where the container stands, in order."""
    decoded: list[av.VideoFrame] = []
    try:
        decoded.extend(container.decode(stream))
    except (av.FFmpegError, OSError) as error:
        raise DecodeError(
            f"decoding failed after {len(decoded)} frames: {_reason(error)}"
        ) from error
    if not decoded:
        raise DecodeError("no decodable video frames")
    return decoded


def decode_all(path: Path, *, threads: int = AUTO_THREADS) -> list[av.VideoFrame]:
    container, stream = open_video(path, threads=threads)
    with container:
        return _decode_through(container, stream)


def _seek_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    indices: np.ndarray,
) -> list[av.VideoFrame] | None:
    """The frames at ``indices`` (sorted, unique) by seeking; None when a seek misses."""
    if not stream.average_rate or not stream.time_base:
        return None
    start = stream.start_time or 0
    frame_seconds = 1 / float(stream.average_rate)
    picked: list[av.VideoFrame] = []
    try:
        for index in indices:
            target = float(index) * frame_seconds
            container.seek(start + int(target / float(stream.time_base)), stream=stream)
            frame = next(
                (
                    candidate
                    for candidate in container.decode(stream)
                    if candidate.pts is not None
                    and (candidate.pts - start) * float(stream.time_base)
                    >= target - frame_seconds / 2
                ),
                None,
            )
            if frame is None:
                return None
            picked.append(frame)
    except (av.FFmpegError, OSError):
        return None
    return picked


def _seeks(announced: int, samples: int, strategy: Strategy) -> bool:
    """Whether to seek: asked to, or (auto) a long video that announces its length."""
    if announced <= 0 or strategy == "decode_all":
        return False
    return strategy == "seek" or announced >= SEEK_MIN_FRAMES_PER_SAMPLE * samples


def _upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB, turned as the frame's display matrix says (frame.rotation: degrees
    counterclockwise; np.rot90 turns counterclockwise too)."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4
    return np.rot90(pixels, k=quarter_turns) if quarter_turns else pixels


def _to_rgb(frames: list[av.VideoFrame]) -> np.ndarray:
    return np.stack([_upright_rgb(frame) for frame in frames])  # (T, H, W, 3)


def num_frames(path: Path) -> int:
    """Frames in a frame folder, or in a video (announced by the container, else counted)."""
    if path.is_dir():
        return len(frame_files(path))
    container, stream = open_video(path)
    with container:
        return _announced_frames(stream) or len(_decode_through(container, stream))


def _pick(
    path: Path,
    unique_indices: Callable[[int], np.ndarray],
    *,
    strategy: Strategy,
    threads: int,
    samples: int,
) -> tuple[list[av.VideoFrame], np.ndarray, int]:
    """The frames a video's ``unique_indices(frame count)`` names (sorted, unique), those
    indices and the frame count, opening the file once: by seeking (a long video that announces
    its length, or ``strategy`` says so) or by decoding through. A missed seek decodes through
    from a fresh start."""
    container, stream = open_video(path, threads=threads)
    with container:
        announced = _announced_frames(stream)
        if _seeks(announced, samples, strategy):
            with suppress(DecodeError):  # an index past the announced end: count by decoding
                indices = unique_indices(announced)
                picked = _seek_frames(container, stream, indices)
                if picked is not None:
                    return picked, indices, announced
        else:
            decoded = _decode_through(container, stream)
            indices = unique_indices(len(decoded))
            return [decoded[i] for i in indices], indices, len(decoded)
    decoded = decode_all(path, threads=threads)
    indices = unique_indices(len(decoded))
    return [decoded[i] for i in indices], indices, len(decoded)


def read_frames(
    path: Path, indices: np.ndarray | list[int], *, strategy: Strategy = "auto"
) -> np.ndarray:
    """Raw RGB frames ``indices`` of a video file or a frame folder: (len(indices), H, W, 3) uint8.

    Indices may repeat and come in any order; an index past the end raises ``DecodeError``.
    """
    wanted = np.asarray(indices, dtype=np.int64)
    if wanted.size == 0:
        raise ValueError("read_frames needs at least one index")
    unique, inverse = np.unique(wanted, return_inverse=True)
    if unique[0] < 0:
        raise DecodeError(f"negative frame index {unique[0]}")
    if path.is_dir():
        files = frame_files(path)
        if unique[-1] >= len(files):
            raise DecodeError(f"frame {unique[-1]} asked, the folder holds {len(files)} frames")
        return _stack([_read_image(files[i]) for i in unique], path.name)[inverse]

    def asked(count: int) -> np.ndarray:
        if unique[-1] >= count:
            raise DecodeError(f"frame {unique[-1]} asked, the video has {count} frames")
        return unique

    picked, _, _ = _pick(path, asked, strategy=strategy, threads=AUTO_THREADS, samples=len(unique))
    return _to_rgb(picked)[inverse]


def sample_clip(
    path: Path,
    frames: int,
    *,
    strategy: Strategy = "auto",
    frame_rule: FrameRule = segment_centers,
    threads: int = AUTO_THREADS,
) -> SampledClip:
    """Decode ``path`` (a video file or a frame folder) and keep ``frames`` frames: segment
    centers, or those ``frame_rule`` picks. ``threads``: the decoder's threads (FFmpeg's own
    choice by default; one is fastest when every core runs a decoding process)."""
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise DecodeError("a folder, not a video file, and it holds no frame images")
        indices = frame_rule(len(files), frames)
        return SampledClip(read_frames(path, indices), indices, len(files))
    rule: dict[int, np.ndarray] = {}  # frame count -> the rule's indices (called once per count)

    def unique_indices(count: int) -> np.ndarray:
        rule[count] = frame_rule(count, frames)
        return np.unique(rule[count])

    picked, unique, count = _pick(
        path, unique_indices, strategy=strategy, threads=threads, samples=frames
    )
    indices = rule[count]
    inverse = np.searchsorted(unique, indices)
    return SampledClip(_to_rgb(picked)[inverse], indices, count)
