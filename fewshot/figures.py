"""The training curve of a run: loss and val accuracy against the iteration, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sact.common.files import atomic_path

# Per-step losses are noisy; the curve shows their mean over a window this many steps wide.
SMOOTHING_STEPS = 50


def training_curve(metrics_path: Path, png_path: Path) -> Path:
    """Plot metrics.jsonl (train loss per step, val accuracy per validation) into `png_path`."""
    losses, accuracies = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append((record["step"], record["loss"]))
        if "val_accuracy" in record:
            accuracies.append((record["step"], record["val_accuracy"]))
    # a figure of its own on the Agg canvas: a file, never a window, whatever pyplot's backend
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    if losses:
        steps, values = zip(*losses, strict=True)
        window = max(1, min(SMOOTHING_STEPS, len(values) // 10))
        cumulative = np.cumsum([0.0, *values])
        starts = np.maximum(0, np.arange(len(values)) - window + 1)
        ends = np.arange(1, len(values) + 1)
        smoothed = (cumulative[ends] - cumulative[starts]) / (ends - starts)
        loss_axis.plot(steps, values, alpha=0.3, label="per step")
        loss_axis.plot(steps, smoothed, label=f"mean of {window}")
        loss_axis.legend()
    loss_axis.set(xlabel="iteration", ylabel="train loss", title="loss")
    if accuracies:
        steps, values = zip(*accuracies, strict=True)
        accuracy_axis.plot(steps, values, marker="o")
    accuracy_axis.set(xlabel="iteration", ylabel="val accuracy", title="validation", ylim=(0, 1))
    figure.tight_layout()
    with atomic_path(png_path) as partial:
        figure.savefig(partial, dpi=100, format="png")
    return png_path
