"""SA-CT's spatial cross-attention made visible: where each query patch looks in the support video.

For one query video and one support video (a 1-shot class), `attention_weights` returns ã of
docs/MODEL.md ("Per episode: match"): for mixed frame i and query patch p, a distribution over the
support's patches m of the same frame i, exactly as `SACT.match` computes it. `draw_attention`
paints it over frames the caller supplies as numpy arrays: this module never decodes a video
(fewshot never imports the decoder); `explain.py` at the top level reads the frames recorded in
the store.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sact.common.files import atomic_path
from sact.fewshot.model import SACT

PATCH_COLOURS = ("red", "lime", "cyan", "yellow")
# Fonts tried after the default for glyphs it lacks (video ids may be in any script): common CJK
# fonts where installed, then matplotlib's own Last Resort font, whose placeholder glyphs cover
# every code point, so no id draws with "Glyph missing from font" warnings.
FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Arial Unicode MS",
    "Last Resort High-Efficiency",
)
PANEL_INCHES = 2.0
DPI = 100
TITLE_FONT_SIZE = 9  # points
TITLE_WIDTH = 0.96  # of the figure's width a title line may take
TITLE_LINE_INCHES = 0.16  # 9 points with matplotlib's line spacing (1.2) and a little air
TITLE_MARGIN_INCHES = 0.24  # above and below the title


def title_fonts() -> list[str]:
    """The default font family, then those of FALLBACK_FONTS that are installed."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    default = list(matplotlib.rcParams["font.family"])
    return default + [name for name in FALLBACK_FONTS if name in installed]


def title_lines(figure: Figure, title: str) -> list[str]:
    """``title`` in lines that each fit the figure's width, broken at spaces, and inside a word
    (a long video name) only where the word alone is too wide: a title wider than the figure
    would be cut at both ends."""
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    room = figure.bbox.width * TITLE_WIDTH
    probe = figure.text(0, 0, "", fontsize=TITLE_FONT_SIZE, fontfamily=title_fonts())

    def fits(text: str) -> bool:
        probe.set_text(text)
        return bool(probe.get_window_extent(renderer).width <= room)

    lines: list[str] = []
    line = ""
    for word in title.split(" "):
        joined = f"{line} {word}" if line else word
        if fits(joined):
            line = joined
            continue
        if line:
            lines.append(line)
        line = ""
        for character in word:
            if line and not fits(line + character):
                lines.append(line)
                line = ""
            line += character
    lines.append(line)
    probe.remove()
    return lines


@torch.no_grad()
def attention_weights(model: SACT, support: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """ã of one query video over one support video: (T', P query patches, P support patches).

    support, query: (T, P, D) cached features of one video each. Row [i, p] sums to 1.
    """
    model.eval()
    device = model.to_value.weight.device
    support_embedding = model.embed(support[None].to(device))  # fields (1, T', P, d_k)
    query_embedding = model.embed(query[None].to(device))  # fields (1, T', P, d_k)
    support_keys = support_embedding.support_keys[None]  # (N=1, K=1, T', P, d_k)
    weights = model.cross_attention(support_keys, query_embedding.query_keys)  # (1, 1, P, T', 1, P)
    return weights[0, 0, :, :, 0, :].permute(1, 0, 2).float().cpu().numpy()  # (T', P, P)


def focused_patches(weights: np.ndarray, count: int) -> np.ndarray:
    """Per frame, the ``count`` query patches whose attention is most concentrated: (T', count).

    A patch that puts most of its weight on a few support patches found a clear counterpart;
    those are the ones worth looking at.
    """
    if not 1 <= count <= weights.shape[1]:
        raise ValueError(f"count must lie in 1..{weights.shape[1]}, got {count}")
    peak = weights.max(axis=-1)  # (T', P)
    return np.argsort(-peak, axis=-1, kind="stable")[:, :count]  # (T', count)


def _patch_box(patch: int, grid: tuple[int, int], size: tuple[int, int]) -> Rectangle:
    rows, cols = grid
    height, width = size
    row, col = divmod(int(patch), cols)
    cell_h, cell_w = height / rows, width / cols
    return Rectangle((col * cell_w - 0.5, row * cell_h - 0.5), cell_w, cell_h, fill=False, lw=2)


def draw_attention(
    *,
    query_frames: np.ndarray,
    support_frames: np.ndarray,
    weights: np.ndarray,
    grid: tuple[int, int],
    patches: np.ndarray,
    path: Path,
    title: str = "",
    frame_labels: list[str] | None = None,
) -> Path:
    """One row per mixed frame i: the query frame with its chosen patches boxed, then for each
    chosen patch the support frame under that patch's attention (heat map, its peak boxed).

    query_frames, support_frames: (T', H, W, 3) uint8, the crops the backbone saw, so the patch
    grid lies on them exactly. weights: (T', P, P) from `attention_weights`. patches: (T', C).
    The PNG is (1 + C)·PANEL_INCHES wide and T'·PANEL_INCHES (+ title) high at DPI.
    """
    frames, count = patches.shape
    rows, cols = grid
    if weights.shape != (frames, rows * cols, rows * cols):
        raise ValueError(f"weights {weights.shape} do not match {frames} frames of grid {grid}")
    if query_frames.shape[0] != frames or support_frames.shape[0] != frames:
        raise ValueError("need one query and one support frame per mixed frame")
    if count > len(PATCH_COLOURS):
        raise ValueError(f"at most {len(PATCH_COLOURS)} patches per frame")
    # a figure of its own on the Agg canvas: a file, never a window, whatever pyplot's backend
    figure = Figure(figsize=((1 + count) * PANEL_INCHES, frames * PANEL_INCHES), dpi=DPI)
    FigureCanvasAgg(figure)
    lines = title_lines(figure, title) if title else []
    header = TITLE_MARGIN_INCHES + TITLE_LINE_INCHES * len(lines) if lines else 0.0
    figure.set_size_inches((1 + count) * PANEL_INCHES, frames * PANEL_INCHES + header)
    axes = figure.subplots(frames, 1 + count, squeeze=False)
    for i in range(frames):
        query_axis = axes[i, 0]
        query_axis.imshow(query_frames[i])
        label = frame_labels[i] if frame_labels else f"frame {i}"
        query_axis.set_ylabel(label, fontsize=8)
        for c in range(count):
            box = _patch_box(patches[i, c], grid, query_frames.shape[1:3])
            box.set_edgecolor(PATCH_COLOURS[c])
            query_axis.add_patch(box)
        for c in range(count):
            axis = axes[i, 1 + c]
            height, width = support_frames.shape[1:3]
            heat = weights[i, patches[i, c]].reshape(rows, cols)  # (h, w) over support patches
            axis.imshow(support_frames[i])
            axis.imshow(
                heat,
                cmap="magma",
                alpha=0.6,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                interpolation="nearest",
                vmin=0.0,
                vmax=max(float(heat.max()), 1e-6),
            )
            peak = _patch_box(int(heat.argmax()), grid, (height, width))
            peak.set_edgecolor(PATCH_COLOURS[c])
            axis.add_patch(peak)
            if i == 0:
                axis.set_title(f"support: where the {PATCH_COLOURS[c]} patch looks", fontsize=7)
        if i == 0:
            query_axis.set_title("query", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if lines:
        figure.suptitle("\n".join(lines), fontsize=TITLE_FONT_SIZE, fontfamily=title_fonts())
    figure.tight_layout(rect=(0, 0, 1, 1 - header / (frames * PANEL_INCHES + header)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        figure.savefig(partial, dpi=DPI, format="png")
    return path
