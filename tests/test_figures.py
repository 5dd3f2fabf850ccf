"""The figures draw on a Figure of their own on the Agg canvas: importing sact sets no backend."""

from __future__ import annotations

import os
import subprocess
import sys

DRAW_UNDER_SVG = """
import json, sys
from pathlib import Path

import numpy as np

import matplotlib
import sact.fewshot.attention, sact.fewshot.figures
from sact.fewshot.attention import draw_attention
from sact.fewshot.figures import training_curve

out = Path(sys.argv[1])
(out / "metrics.jsonl").write_text(
    json.dumps({"step": 1, "loss": 1.0}) + "\\n" + json.dumps({"step": 1, "val_accuracy": 0.5})
)
training_curve(out / "metrics.jsonl", out / "curve.png")
weights = np.full((1, 4, 4), 0.25)
frames = np.zeros((1, 32, 32, 3), np.uint8)
draw_attention(query_frames=frames, support_frames=frames, weights=weights, grid=(2, 2),
               patches=np.array([[0]]), path=out / "attention.png")
print("matplotlib.pyplot" in sys.modules, matplotlib.get_backend())
"""


def test_importing_and_drawing_leave_matplotlib_as_the_caller_set_it(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DRAW_UNDER_SVG, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "svg"},  # a caller's choice that sact must not change
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "svg"]
    for name in ("curve.png", "attention.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
