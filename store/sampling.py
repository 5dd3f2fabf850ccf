"""Which frames of a video are used: the one rule both stages sample by (docs/STORE.md, Frames).

A video of n frames is cut into T equal segments and the center frame of each is kept,
``index_i = floor((i + 0.5) * n / T)`` for i = 0..T-1 (TSN/TRX test-time sampling). Stage 1 picks
the source frames it stores this way (extract/decode.py); stage 2 picks, the same way, which stored
frames a model that uses fewer than all of them sees at test time (fewshot/features.py).
"""

from __future__ import annotations

import numpy as np

FRAME_SAMPLING = "segment centers: index_i = floor((i + 0.5) * n / T), repeating frames when n < T"


def segment_centers(num_frames: int, frames: int) -> np.ndarray:
    """``floor((i + 0.5) * n / T)`` for i < T, in exact integer arithmetic: (T,) int64.

    A video shorter than T frames repeats frames: with n = 3 and T = 8 the indices are
    0 0 0 1 1 2 2 2.
    """
    if num_frames < 1 or frames < 1:
        raise ValueError(
            f"need at least one source frame and one sample, got {num_frames}, {frames}"
        )
    steps = np.arange(frames, dtype=np.int64)
    return ((2 * steps + 1) * num_frames) // (2 * frames)
