"""Benchmark clips that codecs compress as they compress real video, in the formats of SSv2 and
Kinetics, and the moving-noise clips the benchmarks used before (issue 22).

A real clip is mostly predictable from the frame before: a textured scene that the camera pans
over, a few textured objects that move smoothly across it, and sensor noise. The noise is what
the codec cannot predict, so its level sets the bytes per second: it is chosen per format so that
the files weigh what the dataset's do (6 levels of 255 for SSv2's phone videos, 8 for Kinetics'
YouTube clips at 30 fps; a smooth scene without it compresses 2-8x smaller than the datasets).
A clip of per-pixel noise defeats inter-frame prediction, so it decodes slower and weighs far
more than real video; it stays here as the pessimistic reference the earlier measurements used.

The formats, and the real datasets' bytes per second of video they are held to (within 2x,
``tests/test_clips.py``; bench/RESULTS.md has the measured sizes):

- SSv2 (Something-Something v2): VP9 in .webm, 240 px high, 12 fps, 2-6 s. 220,847 videos in 19.4 GB
  (the dataset's download page: 20 archive parts): 87.8 KB per video. At the mean of about 45
  frames per video (3.75 s at 12 fps, the length the project's GPU benchmark uses), 23.4 KB/s.
- Kinetics-400: H.264 in .mp4, 10 s clips cut from YouTube. The CVDF mirror holds 298,824 clips
  (train 240,258, val 19,881, test 38,685) in 435 GiB: 1.56 MB per clip, 156 KB/s. Their
  frame sizes vary with the source; 640x360 at 30 fps stands in for them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sact.demo.synthetic import encode_video


@dataclass(frozen=True)
class ClipFormat:
    """One dataset's video format and the bytes per second of video it ships at."""

    name: str
    suffix: str  # the container, which picks the codec (demo.synthetic.CODECS)
    width: int
    height: int
    fps: int
    seconds: tuple[float, float]  # shortest and longest clip
    real_bytes_per_second: float  # the real dataset's (module docstring)
    sensor_noise: float  # standard deviation, in 8-bit levels, of the noise every frame gets
    encoder_options: tuple[tuple[str, str], ...]  # the codec's quality setting

    def frame_count(self, rng: np.random.Generator) -> int:
        """Frames of one clip, its length drawn uniformly between the shortest and longest."""
        return max(2, round(self.fps * rng.uniform(*self.seconds)))


SSV2 = ClipFormat(
    name="ssv2",
    suffix=".webm",
    width=426,
    height=240,
    fps=12,
    seconds=(2.0, 6.0),
    real_bytes_per_second=19.4e9 / 220_847 / 3.75,
    sensor_noise=6.0,
    # constant quality (libvpx's -crf with -b:v 0), realtime speed so a benchmark encodes quickly
    encoder_options=(("crf", "32"), ("b", "0"), ("deadline", "realtime"), ("cpu-used", "8")),
)
KINETICS = ClipFormat(
    name="kinetics",
    suffix=".mp4",
    width=640,
    height=360,
    fps=30,
    seconds=(10.0, 10.0),
    real_bytes_per_second=435 * 2**30 / 298_824 / 10.0,
    sensor_noise=8.0,
    encoder_options=(("crf", "23"), ("preset", "veryfast")),  # x264's default quality
)
FORMATS = {clip_format.name: clip_format for clip_format in (SSV2, KINETICS)}

TEXTURE_OCTAVES = 6  # the finest detail: a 128th of the height
OBJECTS = 3  # textured objects moving over the scene
PAN_PIXELS_PER_SECOND = (10.0, 40.0)  # the camera's drift, drawn per clip
OBJECT_PIXELS_PER_SECOND = (20.0, 90.0)  # each object's speed, drawn per object


def texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: random detail at scales from a quarter of the height down
    to a few pixels, each a bicubic enlargement of a small random image, the finer ones weaker
    (natural images' amplitude falls about as 1/frequency)."""
    result = np.zeros((height, width, 3), dtype=np.float32)
    weights = 0.5 ** np.arange(TEXTURE_OCTAVES)
    for octave, weight in enumerate(weights / weights.sum()):
        cells = 4 * 2**octave
        small = rng.uniform(0, 255, size=(cells, cells * width // height + 1, 3))
        image = Image.fromarray(small.astype(np.uint8))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        result += weight * np.asarray(image, dtype=np.float32)
    return result


@dataclass
class MovingObject:
    """A textured ellipse that glides across the frame and bounces off its edges."""

    pixels: np.ndarray  # (h, w, 3) float32
    mask: np.ndarray  # (h, w, 1) float32 in [0, 1], soft at the rim
    top: float
    left: float
    velocity: tuple[float, float]  # pixels per frame, (down, right)

    @classmethod
    def random(
        cls, frame_height: int, frame_width: int, fps: int, rng: np.random.Generator
    ) -> MovingObject:
        height = int(rng.uniform(0.2, 0.45) * frame_height)
        width = int(rng.uniform(0.15, 0.35) * frame_width)
        rows, cols = np.mgrid[0:height, 0:width]
        radius = ((rows - height / 2) / (height / 2)) ** 2 + ((cols - width / 2) / (width / 2)) ** 2
        mask = np.clip((1.0 - radius) * 4, 0, 1)[..., None].astype(np.float32)
        speed = rng.uniform(*OBJECT_PIXELS_PER_SECOND) / fps
        angle = rng.uniform(0, 2 * np.pi)
        return cls(
            pixels=texture(height, width, rng),
            mask=mask,
            top=rng.uniform(0, frame_height - height),
            left=rng.uniform(0, frame_width - width),
            velocity=(speed * np.sin(angle), speed * np.cos(angle)),
        )

    def step(self, frame_height: int, frame_width: int) -> None:
        height, width = self.mask.shape[:2]
        down, right = self.velocity
        if not 0 <= self.top + down <= frame_height - height:
            down = -down
        if not 0 <= self.left + right <= frame_width - width:
            right = -right
        self.velocity = (down, right)
        self.top += down
        self.left += right

    def paint(self, frame: np.ndarray) -> None:
        height, width = self.mask.shape[:2]
        top, left = round(self.top), round(self.left)
        region = frame[top : top + height, left : left + width]
        region += self.mask * (self.pixels - region)


def realistic_frames(
    clip_format: ClipFormat, *, seed: int, frames: int | None = None
) -> np.ndarray:
    """(F, H, W, 3) uint8: a camera panning over a textured scene while ``OBJECTS`` textured
    objects move across it, with sensor noise; F drawn from the format's lengths unless given."""
    rng = np.random.default_rng(seed)
    count = frames if frames is not None else clip_format.frame_count(rng)
    height, width, fps = clip_format.height, clip_format.width, clip_format.fps
    pan_speed = rng.uniform(*PAN_PIXELS_PER_SECOND) / fps
    pan_angle = rng.uniform(0, 2 * np.pi)
    pan = (pan_speed * np.sin(pan_angle), pan_speed * np.cos(pan_angle))  # pixels per frame
    margin = int(np.ceil(pan_speed * count)) + 1
    scene = texture(height + 2 * margin, width + 2 * margin, rng)
    objects = [MovingObject.random(height, width, fps, rng) for _ in range(OBJECTS)]
    clip = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        top = margin + round(pan[0] * index)
        left = margin + round(pan[1] * index)
        frame = scene[top : top + height, left : left + width].copy()  # (H, W, 3)
        for moving in objects:
            moving.paint(frame)
            moving.step(height, width)
        frame += rng.normal(0, clip_format.sensor_noise, size=frame.shape).astype(np.float32)
        clip[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return clip


def noise_frames(*, frames: int, width: int, height: int, seed: int) -> np.ndarray:
    """(F, H, W, 3) uint8 of random 8x8 blocks, new in every frame: what the benchmarks used
    before issue 22, which defeats inter-frame prediction."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(frames, height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width])


def write_realistic_clip(
    path: Path, clip_format: ClipFormat, *, seed: int, frames: int | None = None
) -> Path:
    """One realistic clip of ``clip_format`` at ``path`` (its suffix must be the format's)."""
    if path.suffix != clip_format.suffix:
        raise ValueError(f"a {clip_format.name} clip is a {clip_format.suffix} file, not {path}")
    return encode_video(
        path,
        realistic_frames(clip_format, seed=seed, frames=frames),
        fps=clip_format.fps,
        options=dict(clip_format.encoder_options),
    )


def write_noise_clip(path: Path, *, frames: int, width: int, height: int, seed: int) -> Path:
    """One moving-noise clip at ``path`` (the codec follows its suffix), at 12 fps."""
    return encode_video(path, noise_frames(frames=frames, width=width, height=height, seed=seed))


def bytes_per_second(path: Path, clip_format: ClipFormat, frames: int) -> float:
    """The file's size per second of video."""
    return path.stat().st_size / (frames / clip_format.fps)
