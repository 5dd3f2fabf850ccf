"""A zoo of bad and unusual videos, encoded with PyAV: one entry per way a video file met in a
lab's folder can be broken or odd, each with what `sact extract` owes it.

Broken files are *recorded*: the video's row gets its own reason and the run goes on. Odd but
sound videos (one frame, a variable frame rate, a rotation tag, 10-bit or 4:4:4 pixels, a very
long clip) are *extracted*, as a researcher who drops them into a dataset expects. A file whose
name is not UTF-8 cannot be named in the store (its ids and paths are UTF-8 text): it is *skipped*
and said so, with its name, by the run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from sact.demo.synthetic import encode_video
from sact.testing.videos import (
    synthetic_frames,
    write_audio_only,
    write_frame_folder,
    write_zero_frames,
)
from tests.faults.scenarios import Injection

Outcome = Literal["recorded", "extracted", "skipped"]

# A header claiming frames of this size (192 Mpixel) is refused before anything is decoded.
HUGE_WIDTH, HUGE_HEIGHT = 16000, 12000
LONG_VIDEO_FRAMES = 3000
LONG_VIDEO_SIZE = 32
# A bound, not a benchmark: the zoo takes seconds, and no kind of video may make it take minutes.
ZOO_SECONDS = 120
# Milliseconds between the frames of the variable-frame-rate clip, repeated.
VFR_GAPS_MS = (40, 80, 20, 120)


@dataclass(frozen=True)
class BadVideo:
    """One video of the zoo and what extraction owes it."""

    kind: str
    path: str  # relative to the zoo folder, as `sact extract` stores it
    outcome: Outcome
    reason: str  # for "recorded": a fragment of the stored reason; else what is checked
    frames: int = 0  # for "extracted": frames the video has


def _encode(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    pixel_format: str = "yuv420p",
    pts_ms: list[int] | None = None,
) -> Path:
    """``frames`` (N, H, W, 3) uint8 encoded on one thread; ``pts_ms``: each frame's time."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=12)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        stream.codec_context.thread_count = 1  # the same bytes every time (demo/synthetic.py)
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_huge_header(path: Path) -> Path:
    """A matroska file whose raw video stream claims HUGE_WIDTH x HUGE_HEIGHT frames (192 MB a
    frame in gray, 576 MB in RGB) and holds three tiny packets."""
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("rawvideo", rate=12)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = HUGE_WIDTH, HUGE_HEIGHT, "gray"
        container.start_encoding()
        for index in range(3):
            packet = av.Packet(bytes(1000))
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = Fraction(1, 12)
            container.mux(packet)
    return path


def write_undecodable(path: Path) -> Path:
    """A sound FFV1 matroska file whose codec id is changed to one no FFmpeg knows."""
    _encode(path, synthetic_frames(6, seed=31), codec="ffv1")
    data = path.read_bytes()
    assert data.count(b"V_FFV1") == 1
    path.write_bytes(data.replace(b"V_FFV1", b"V_SACT"))
    return path


def write_rotated(path: Path, frames: np.ndarray) -> Path:
    """An mp4 whose track header carries a display matrix turning it 90 degrees clockwise, as a
    phone held upright writes: players (and sact) show it rotated."""
    _encode(path, frames)
    data = bytearray(path.read_bytes())
    fixed = 1 << 16  # 16.16 fixed point
    identity = struct.pack(">9I", fixed, 0, 0, 0, fixed, 0, 0, 0, 1 << 30)
    matrix = data.index(identity, data.index(b"tkhd"))
    height = frames.shape[1]
    clockwise = struct.pack(">9i", 0, fixed, 0, -fixed, 0, 0, height * fixed, 0, 1 << 30)
    data[matrix : matrix + len(identity)] = clockwise
    path.write_bytes(bytes(data))
    return path


def write_corrupt_middle(path: Path) -> Path:
    """An h264 mp4 with 400 seeded random bytes written over the middle of its frames."""
    _encode(path, synthetic_frames(48, seed=32))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    garbage = np.random.default_rng(32).integers(0, 256, size=400, dtype=np.uint8)
    data[middle : middle + len(garbage)] = garbage.tobytes()
    path.write_bytes(bytes(data))
    return path


def rotated_clockwise(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> (N, W, H, 3): what a viewer sees of a video tagged as rotated."""
    return np.rot90(frames, k=-1, axes=(1, 2))


ROTATED_FRAMES = synthetic_frames(8, seed=33)


def write_bad_video_zoo(folder: Path) -> list[BadVideo]:
    """Every kind of the zoo as a flat folder of videos (SSv2's layout), each its own id."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = encode_video(folder / "whole.mp4", synthetic_frames(12, seed=30)).read_bytes()
    (folder / "whole.mp4").unlink()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    write_audio_only(folder / "audio_only.mkv")
    write_zero_frames(folder / "zero_frames.mkv")
    _encode(folder / "one_frame.mp4", synthetic_frames(1, seed=34))
    write_huge_header(folder / "huge_resolution.mkv")
    write_corrupt_middle(folder / "corrupt_middle.mp4")
    vfr_times = np.cumsum([0, *VFR_GAPS_MS * 4])[:16].tolist()
    _encode(folder / "variable_frame_rate.mkv", synthetic_frames(16, seed=35), pts_ms=vfr_times)
    write_rotated(folder / "rotated.mp4", ROTATED_FRAMES)
    _encode(folder / "ten_bit.mp4", synthetic_frames(10, seed=36), pixel_format="yuv420p10le")
    _encode(folder / "yuv444.mp4", synthetic_frames(10, seed=37), pixel_format="yuv444p")
    write_undecodable(folder / "undecodable_codec.mkv")
    (folder / "folder.mp4").mkdir()
    (folder / "folder.mp4" / "notes.txt").write_text("a folder named like a video\n")
    (folder / "dangling_link.mp4").symlink_to(folder / "deleted_long_ago.mp4")
    shutil.copy(folder / "one_frame.mp4", folder / os.fsdecode(b"name_\xff\xfe.mp4"))
    long_frames = synthetic_frames(
        LONG_VIDEO_FRAMES, seed=38, height=LONG_VIDEO_SIZE, width=LONG_VIDEO_SIZE
    )
    _encode(folder / "long_video.mp4", long_frames, codec="mpeg4")
    write_frame_folder(folder / "unreadable_frame", synthetic_frames(3, seed=39))
    (folder / "unreadable_frame" / "00002.jpg").write_bytes(b"not a jpeg")
    mixed = write_frame_folder(folder / "mixed_frame_sizes", synthetic_frames(3, seed=40))
    write_frame_folder(mixed.with_name("other-size"), synthetic_frames(1, seed=41, width=32))
    (mixed.with_name("other-size") / "00001.jpg").rename(mixed / "00004.jpg")
    mixed.with_name("other-size").rmdir()
    return [
        BadVideo("empty file", "empty.mp4", "recorded", "empty file (0 bytes)"),
        BadVideo(
            "truncated file", "truncated.mp4", "recorded", "damaged or truncated MP4/QuickTime"
        ),
        BadVideo("not a video (text)", "not_a_video.mp4", "recorded", "not a readable video"),
        BadVideo(
            "audio only",
            "audio_only.mkv",
            "recorded",
            "no video stream (the file holds only audio)",
        ),
        BadVideo("zero frames", "zero_frames.mkv", "recorded", "no frames"),
        BadVideo("one frame", "one_frame.mp4", "extracted", "its one frame repeated", 1),
        BadVideo(
            "header claims a huge resolution",
            "huge_resolution.mkv",
            "recorded",
            f"frames of {HUGE_WIDTH}x{HUGE_HEIGHT}",
        ),
        BadVideo(
            "corrupt packets in the middle", "corrupt_middle.mp4", "recorded", "decoding failed"
        ),
        BadVideo(
            "variable frame rate",
            "variable_frame_rate.mkv",
            "extracted",
            "frames in decode order",
            16,
        ),
        BadVideo("rotation tag (90°)", "rotated.mp4", "extracted", "frames turned upright", 8),
        BadVideo("10-bit pixels", "ten_bit.mp4", "extracted", "yuv420p10le converted", 10),
        BadVideo("4:4:4 pixels", "yuv444.mp4", "extracted", "yuv444p converted", 10),
        BadVideo("a codec FFmpeg cannot decode", "undecodable_codec.mkv", "recorded", "no decoder"),
        BadVideo("a folder named x.mp4", "folder.mp4", "recorded", "a folder, not a video file"),
        BadVideo(
            "dangling symbolic link", "dangling_link.mp4", "recorded", "dangling symbolic link"
        ),
        BadVideo("non-UTF-8 file name", "name_\\xff\\xfe.mp4", "skipped", "not valid UTF-8"),
        BadVideo(
            f"very long video ({LONG_VIDEO_FRAMES} frames)",
            "long_video.mp4",
            "extracted",
            "sampled by seeking",
            LONG_VIDEO_FRAMES,
        ),
        BadVideo(
            "frame folder with an unreadable image",
            "unreadable_frame",
            "recorded",
            "unreadable frame 00002.jpg",
        ),
        BadVideo(
            "frame folder with frames of two sizes",
            "mixed_frame_sizes",
            "recorded",
            "frames differ in size",
        ),
    ]


def zoo_outcomes(
    location: str, name: str, zoo: list[BadVideo], *, unnamable: list[str]
) -> list[tuple[BadVideo, str, bool]]:
    """What an extraction of the zoo did with each video, read back from its feature set
    ``name`` (and ``unnamable``, the files the run said it skipped): (video, outcome, whether that
    is what extraction owes it)."""
    import zarr

    group = zarr.open_group(location, mode="r")[name]
    rows = {str(path): row for row, path in enumerate(group["path"][:])}
    done, errors, counts = group["done"][:], group["error"][:], group["num_frames"][:]
    outcomes = []
    for video in zoo:
        row = rows.get(video.path)
        if video.outcome == "skipped":
            outcome = "skipped, named by the run" if video.path in unnamable else "not skipped"
            owed = video.path in unnamable and row is None
        elif row is None:
            outcome, owed = "missing from the store", False
        elif not done[row]:
            outcome, owed = "not done", False
        elif errors[row]:
            outcome = f"recorded: {errors[row]}"
            owed = video.outcome == "recorded" and video.reason in str(errors[row])
        else:
            outcome = f"extracted ({counts[row]} source frames)"
            owed = video.outcome == "extracted" and counts[row] == video.frames
        outcomes.append((video, outcome, owed))
    return outcomes


def zoo_extraction(workdir: Path) -> list[Injection]:
    """`sact extract` over the whole zoo, as a user runs it, then once more (the retries): one
    ``Injection`` per kind, owed when extraction did what ``BadVideo.outcome`` says both times,
    the run was not stopped and took less than ZOO_SECONDS."""
    import time

    from tests.faults.scenarios import FEATURE_SET, extract_arguments, failure_message, run_sact

    zoo = write_bad_video_zoo(workdir / "zoo")
    store = workdir / "zoo.zarr"
    outcomes = []
    for attempt in ("first run", "second run"):
        started = time.perf_counter()
        completed = run_sact([*extract_arguments(workdir / "zoo", store), "--json"])
        seconds = time.perf_counter() - started
        if completed.returncode not in (0, 1) or not completed.stdout.strip():
            raise RuntimeError(f"the zoo stopped sact extract: {failure_message(completed)}")
        summary = json.loads(completed.stdout)
        read = zoo_outcomes(str(store), FEATURE_SET, zoo, unnamable=summary["unnamable"])
        outcomes.append((attempt, seconds, read))
    injections = []
    for index, video in enumerate(zoo):
        said = sorted({read[index][1] for _, _, read in outcomes})
        owed = all(read[index][2] for _, _, read in outcomes)
        timing = ", ".join(f"{attempt} {seconds:.1f} s" for attempt, seconds, _ in outcomes)
        bounded = all(seconds < ZOO_SECONDS for _, seconds, _ in outcomes)
        injections.append(
            Injection(
                f"bad video: {video.kind}",
                f"{video.path} among {len(zoo)} kinds ({timing})",
                " / ".join(said),
                owed and bounded,
            )
        )
    return injections
