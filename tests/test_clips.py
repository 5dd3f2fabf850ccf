"""The benchmark clips (sact.testing.clips, issue 22): in the real datasets' formats, weighing
what their files weigh per second of video (within 2x), the same for the same seed; the old
noise clips are the heavy, unpredictable reference."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from sact.testing.clips import (
    FORMATS,
    SSV2,
    bytes_per_second,
    realistic_frames,
    write_noise_clip,
    write_realistic_clip,
)

# long enough that the first keyframe weighs no more than a real clip's does
FRAMES = {"ssv2": 45, "kinetics": 90}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_realistic_clips_weigh_what_the_dataset_does_per_second(name: str, tmp_path: Path) -> None:
    clip_format = FORMATS[name]
    path = tmp_path / f"clip{clip_format.suffix}"
    write_realistic_clip(path, clip_format, seed=0, frames=FRAMES[name])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == (
            {".webm": "vp9", ".mp4": "h264"}[clip_format.suffix],
            clip_format.width,
            clip_format.height,
        )
        assert sum(1 for _ in container.decode(stream)) == FRAMES[name]
    ratio = bytes_per_second(path, clip_format, FRAMES[name]) / clip_format.real_bytes_per_second
    assert 0.5 <= ratio <= 2.0, f"{name}: {ratio:.2f} x the real dataset's bytes per second"


def test_noise_clips_weigh_several_times_realistic_ones(tmp_path: Path) -> None:
    realistic = write_realistic_clip(tmp_path / "real.webm", SSV2, seed=0, frames=45)
    noise = write_noise_clip(
        tmp_path / "noise.webm", frames=45, width=SSV2.width, height=SSV2.height, seed=0
    )
    assert noise.stat().st_size > 2 * realistic.stat().st_size


def test_the_same_seed_gives_the_same_clip() -> None:
    first = realistic_frames(SSV2, seed=5)
    np.testing.assert_array_equal(first, realistic_frames(SSV2, seed=5))
    assert 2 * SSV2.fps <= len(first) <= 6 * SSV2.fps
    assert not np.array_equal(first[:10], realistic_frames(SSV2, seed=6, frames=10))
