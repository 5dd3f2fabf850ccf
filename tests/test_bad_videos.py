"""The zoo of bad and unusual videos (tests.faults.bad_videos): each recorded with its own reason,
extracted, or skipped and said so; none stops the run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sact.extract import decode
from sact.extract.decode import DecodeError, sample_clip
from sact.store.sampling import segment_centers
from sact.testing.extraction import extract_in_this_process, tiny_config
from tests.faults.bad_videos import (
    LONG_VIDEO_FRAMES,
    ROTATED_FRAMES,
    ZOO_SECONDS,
    rotated_clockwise,
    write_bad_video_zoo,
    zoo_outcomes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("zoo") / "videos"
    return folder, write_bad_video_zoo(folder)


def test_every_kind_is_recorded_extracted_or_skipped_and_none_stops_the_run(
    zoo: tuple[Path, list], tmp_path: Path
) -> None:
    # Before: a file name that is not UTF-8 stopped the run with a UnicodeEncodeError while the
    # feature set was created, and a folder named x.mp4 or a dangling link were passed over.
    folder, videos = zoo
    assert len(videos) >= 15
    store = tmp_path / "zoo.zarr"
    started = time.perf_counter()
    extract_in_this_process(folder, store)
    assert time.perf_counter() - started < ZOO_SECONDS
    from sact.extract.pipeline import run_extraction

    summary = run_extraction(tiny_config(folder, store))  # nothing to redo but the failures
    outcomes = zoo_outcomes(str(store), "tiny", videos, unnamable=summary.unnamable)
    assert [(video.kind, outcome) for video, outcome, owed in outcomes if not owed] == []
    reasons = [outcome for video, outcome, _ in outcomes if video.outcome == "recorded"]
    assert len(set(reasons)) == len(reasons)  # each kind its own reason
    assert summary.unnamable == ["name_\\xff\\xfe.mp4"]


def test_a_rotation_tag_turns_the_frames_upright(zoo: tuple[Path, list]) -> None:
    folder, _ = zoo
    clip = sample_clip(folder / "rotated.mp4", 4)
    upright = rotated_clockwise(ROTATED_FRAMES)[clip.indices]  # (T, W, H, 3)
    assert clip.frames.shape == upright.shape
    error = np.abs(clip.frames.astype(np.int16) - upright).mean()
    assert error < 8, error  # h264's loss; unturned frames would not even have this shape


def test_a_huge_header_is_refused_before_decoding(zoo: tuple[Path, list]) -> None:
    folder, _ = zoo
    with pytest.raises(DecodeError, match=r"claims frames of 16000x12000.*not decoded"):
        sample_clip(folder / "huge_resolution.mkv", 4)


def test_a_very_long_video_is_sampled_by_seeking(
    zoo: tuple[Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = zoo
    everything = sample_clip(folder / "long_video.mp4", 4, strategy="decode_all")

    def decode_through(container, stream) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError(f"{container.name}: decoded all {LONG_VIDEO_FRAMES} frames")

    monkeypatch.setattr(decode, "_decode_through", decode_through)
    sought = sample_clip(folder / "long_video.mp4", 4)
    np.testing.assert_array_equal(sought.indices, segment_centers(LONG_VIDEO_FRAMES, 4))
    np.testing.assert_array_equal(sought.frames, everything.frames)
