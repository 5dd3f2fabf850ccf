"""Decoding and frame sampling on real h264/vp9 files, frame folders and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sact.demo.synthetic import encode_video
from sact.extract.decode import (
    SEEK_MIN_FRAMES_PER_SAMPLE,
    DecodeError,
    num_frames,
    read_frames,
    sample_clip,
)
from sact.store.sampling import segment_centers
from sact.testing.videos import VIDEO_FRAMES, synthetic_frames

# Lossy codecs (vp9 at its fastest setting most) change pixels by a few levels on average.
CODEC_TOLERANCE = 12.0


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize(("n", "t"), [(10, 4), (16, 8), (3, 8), (1, 4), (8, 8), (300, 8)])
def test_segment_centers_follow_the_formula(n: int, t: int) -> None:
    expected = [int(np.floor((i + 0.5) * n / t)) for i in range(t)]
    assert segment_centers(n, t).tolist() == expected


def test_short_videos_repeat_frames() -> None:
    assert segment_centers(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("relative", ["juggling/j1.mp4", "juggling/j2.webm", "riding bike/r1.mp4"])
def test_sampled_frames_are_the_source_frames_at_segment_centers(
    video_folder: Path, relative: str
) -> None:
    count = VIDEO_FRAMES[relative]
    seed = list(VIDEO_FRAMES).index(relative)
    source = synthetic_frames(count, seed=seed)
    clip = sample_clip(video_folder / relative, 4)
    assert clip.num_frames == count
    assert clip.indices.tolist() == segment_centers(count, 4).tolist()
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    for frame, index in zip(clip.frames, clip.indices, strict=True):
        distances = [mean_abs_difference(frame, candidate) for candidate in source]
        assert int(np.argmin(distances)) == index  # the closest source frame is the sampled one
        assert distances[index] < CODEC_TOLERANCE


@pytest.mark.parametrize("suffix", [".avi", ".mkv"])
def test_other_containers_decode_too(tmp_path: Path, suffix: str) -> None:
    source = synthetic_frames(9, seed=11)
    clip = sample_clip(encode_video(tmp_path / f"clip{suffix}", source), 3)
    assert clip.num_frames == 9 and clip.indices.tolist() == [1, 4, 7]
    for frame, index in zip(clip.frames, clip.indices, strict=True):
        assert mean_abs_difference(frame, source[index]) < CODEC_TOLERANCE


def test_frame_folder_reads_images_in_order(video_folder: Path) -> None:
    folder = video_folder / "riding bike/r2"
    clip = sample_clip(folder, 4)
    assert clip.num_frames == 6 and clip.indices.tolist() == [0, 2, 3, 5]
    for frame, index in zip(clip.frames, clip.indices, strict=True):
        expected = np.asarray(Image.open(folder / f"{index + 1:05d}.jpg").convert("RGB"))
        np.testing.assert_array_equal(frame, expected)
    assert num_frames(folder) == 6


def test_frame_folder_sorts_numbers_naturally(tmp_path: Path) -> None:
    frames = synthetic_frames(11, seed=3)
    for index, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(tmp_path / f"img_{index}.png")
    np.testing.assert_array_equal(read_frames(tmp_path, [1, 9, 10]), frames[[1, 9, 10]])


def test_short_video_repeats_decoded_frames(video_folder: Path) -> None:
    clip = sample_clip(video_folder / "juggling/short.mp4", 8)
    assert clip.num_frames == 3 and clip.indices.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(clip.frames[0], clip.frames[2])
    np.testing.assert_array_equal(clip.frames[5], clip.frames[7])


def test_read_frames_any_order_with_repeats(video_folder: Path) -> None:
    path = video_folder / "juggling/j1.mp4"
    every = read_frames(path, list(range(12)))
    np.testing.assert_array_equal(read_frames(path, [7, 2, 2, 11]), every[[7, 2, 2, 11]])
    with pytest.raises(DecodeError, match="12 frames"):
        read_frames(path, [12])


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    count = SEEK_MIN_FRAMES_PER_SAMPLE + 8
    return encode_video(
        tmp_path_factory.mktemp("long") / "long.mp4", synthetic_frames(count, seed=7)
    )


def test_seeking_gives_the_frames_decoding_everything_gives(long_video: Path) -> None:
    seek = sample_clip(long_video, 3, strategy="seek")
    full = sample_clip(long_video, 3, strategy="decode_all")
    assert seek.indices.tolist() == full.indices.tolist()
    np.testing.assert_array_equal(seek.frames, full.frames)
    indices = [70, 0, 35, 35, 71]
    np.testing.assert_array_equal(
        read_frames(long_video, indices, strategy="seek"),
        read_frames(long_video, indices, strategy="decode_all"),
    )


def test_auto_seeks_only_long_videos(long_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sact.extract.decode as decode

    seeks: list[Path] = []
    original = decode._seek_frames

    def counting(container, stream, indices: np.ndarray):  # type: ignore[no-untyped-def]
        seeks.append(Path(container.name))
        return original(container, stream, indices)

    monkeypatch.setattr(decode, "_seek_frames", counting)
    auto = sample_clip(long_video, 1)  # 72 frames for 1 sample: worth seeking
    assert seeks == [long_video]
    sample_clip(long_video, 8)  # 9 frames per sample: decode everything
    assert seeks == [long_video]
    np.testing.assert_array_equal(
        auto.frames, sample_clip(long_video, 1, strategy="decode_all").frames
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty file"),
        ("truncated", "a damaged or truncated MP4/QuickTime file"),
        ("not_a_video", "not a readable video"),
        ("audio_only", "no video stream (the file holds only audio)"),
        ("zero_frames", "no frames"),
    ],
)
def test_corrupt_files_give_clear_reasons(
    corrupt_files: dict[str, Path], kind: str, reason: str
) -> None:
    with pytest.raises(DecodeError) as raised:
        sample_clip(corrupt_files[kind], 4)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_file_and_unreadable_frame(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot read file"):
        sample_clip(tmp_path / "gone.mp4", 4)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames/00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DecodeError, match=r"unreadable frame 00001\.jpg"):
        sample_clip(tmp_path / "frames", 4)
