"""Views of a video: which frames and which part of each frame the backbone sees.

The **canonical** view is what format 1 stores and evaluation uses: T frames at segment centers
(extract/decode.py), the center crop, no flip. An **augmented** view changes some of that, the way
published few-shot training does on pixels (docs/STORE.md, "Views"):

- ``jitter``: one random frame inside each of the T segments instead of its center;
- ``crop-tl``, ``crop-tr``, ``crop-bl``, ``crop-br``: a corner crop at the backbone's size, and
  ``crop-random``: a crop at a random place; the same place on every frame of the clip;
- ``flip``: every frame mirrored left to right (changes the meaning of direction-sensitive classes,
  e.g. SSv2's "pushing something from left to right"; never on by default);
- ``d<k>``: the draw, so several random views differ (``jitter_crop-random_d0``, ``..._d1``).

A view's name is its spec in normal form, parts joined by ``_`` in the order above, e.g.
``jitter_crop-random_d2``. Every random choice is a pure function of (view name, video id), from
its own ``np.random.Generator``: a video redone later, in another process, gets the same frames and
the same crop.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from sact.common.errors import SactError
from sact.data.split_lists import direction_sensitive
from sact.store.sampling import segment_centers

CANONICAL = "canonical"
CORNER_CROPS = ("tl", "tr", "bl", "br")
CROPS = ("center", *CORNER_CROPS, "random")
SPEC_GRAMMAR = "parts joined by '_': jitter, crop-{tl,tr,bl,br,random}, flip, d<k>"
# Separate streams of a view's generator, so the frame draw never shifts the crop draw.
FRAME_STREAM, CROP_STREAM = 0, 1


class ViewError(SactError):
    """A view that cannot be extracted as asked; the message is one line for the user."""


def _stable_hash(text: str) -> int:
    """The same number for the same text in every process (Python's hash() is salted)."""
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view; ``ViewSpec()`` is the canonical one."""

    jitter: bool = False
    crop: str = "center"
    flip: bool = False
    draw: int = 0

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ViewError(f"unknown crop {self.crop!r}; one of {', '.join(CROPS)}")
        if self.draw < 0 or (self.draw and not self.is_random):
            raise ViewError(f"draw d{self.draw} applies only to random views (jitter, crop-random)")

    @property
    def is_random(self) -> bool:
        return self.jitter or self.crop == "random"

    @property
    def is_canonical(self) -> bool:
        return self == ViewSpec()

    @property
    def name(self) -> str:
        if self.is_canonical:
            return CANONICAL
        parts = ["jitter"] if self.jitter else []
        if self.crop != "center":
            parts.append(f"crop-{self.crop}")
        if self.flip:
            parts.append("flip")
        if self.is_random:
            parts.append(f"d{self.draw}")
        return "_".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"jitter": self.jitter, "crop": self.crop, "flip": self.flip, "draw": self.draw}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ViewSpec:
        return cls(
            jitter=bool(data["jitter"]),
            crop=str(data["crop"]),
            flip=bool(data["flip"]),
            draw=int(data["draw"]),
        )

    def _rng(self, video_id: str, stream: int) -> np.random.Generator:
        return np.random.default_rng([_stable_hash(self.name), _stable_hash(video_id), stream])

    def frame_indices(self, num_frames: int, frames: int, video_id: str) -> np.ndarray:
        """Which of the video's ``num_frames`` source frames the view uses: (T,) int64.

        ``jitter``: segment i holds frames floor(i·n/T) .. floor((i+1)·n/T) - 1 and one of them
        is drawn; a video shorter than T has empty segments, which keep the segment center (a
        repeated frame, as in the canonical view).
        """
        centers = segment_centers(num_frames, frames)
        if not self.jitter:
            return centers
        steps = np.arange(frames, dtype=np.int64)
        starts = (steps * num_frames) // frames  # (T,)
        lengths = ((steps + 1) * num_frames) // frames - starts  # (T,)
        drawn = starts + self._rng(video_id, FRAME_STREAM).integers(0, np.maximum(lengths, 1))
        return np.where(lengths > 0, drawn, centers)

    def crop_origin(self, height: int, width: int, size: int, video_id: str) -> tuple[int, int]:
        """Top-left corner (top, left) of the size×size crop in a height×width resized frame.

        ``center`` places it as torchvision's center_crop does, so a view with only a flip or a
        jitter shares the canonical crop.
        """
        free_rows, free_cols = max(0, height - size), max(0, width - size)
        if self.crop == "random":
            top, left = self._rng(video_id, CROP_STREAM).integers(0, [free_rows + 1, free_cols + 1])
            return int(top), int(left)
        if self.crop in CORNER_CROPS:
            top = 0 if self.crop[0] == "t" else free_rows
            left = 0 if self.crop[1] == "l" else free_cols
            return top, left
        return round(free_rows / 2), round(free_cols / 2)


def parse_view(text: str) -> ViewSpec:
    """A view from its spec (``jitter_crop-random_d1``, ``crop-tl``, ``flip``, ...)."""
    jitter, crop, flip, draw = False, "center", False, 0
    seen: set[str] = set()
    for part in text.strip().split("_"):
        kind = "crop" if part.startswith("crop-") else "draw" if part[:1] == "d" else part
        if kind in seen:
            raise ViewError(f"view {text!r} names {kind} twice")
        seen.add(kind)
        if part == "jitter":
            jitter = True
        elif part == "flip":
            flip = True
        elif kind == "crop" and part.removeprefix("crop-") in CROPS:
            crop = part.removeprefix("crop-")
        elif kind == "draw" and part[1:].isdigit():
            draw = int(part[1:])
        else:
            raise ViewError(f"cannot read view {text!r}: {SPEC_GRAMMAR}")
    view = ViewSpec(jitter=jitter, crop=crop, flip=flip, draw=draw)
    if view.is_canonical:
        raise ViewError(f"view {text!r} is the canonical view, which every feature set stores")
    return view


def random_views(count: int) -> list[ViewSpec]:
    """``count`` views of jittered frames and random crops, no flip: the usual training views."""
    return [ViewSpec(jitter=True, crop="random", draw=draw) for draw in range(count)]


def requested_views(
    specs: list[str], *, random_count: int, flip_allowed: bool, split: str | None
) -> list[ViewSpec]:
    """The augmented views a run extracts, in order, without repeats; flips on a
    direction-sensitive split (SSv2) only with ``flip_allowed``."""
    if random_count < 0:
        raise ViewError(f"--random-views must be at least 0, got {random_count}")
    asked = [parse_view(spec) for spec in specs] + random_views(random_count)
    views = list(dict.fromkeys(asked))  # in order, without repeats
    flipped = [view.name for view in views if view.flip]
    if flipped and split is not None and direction_sensitive(split) and not flip_allowed:
        raise ViewError(
            f"view {flipped[0]} flips frames, which changes the meaning of {split}'s "
            "direction-sensitive classes (e.g. 'pushing something from left to right'); "
            "pass --allow-flip to extract it anyway"
        )
    return views
