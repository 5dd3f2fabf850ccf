"""What a new user found rough (issue 24, item 7): extraction's rate, counts in sentences, the
attention figure's title, and a resumed finished run reading its split again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from sact.extract.pipeline import VideosPerSecond
from sact.fewshot.attention import draw_attention, title_lines
from sact.fewshot.training import TrainConfig, train
from sact.testing.extraction import extract_in_this_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_bars_rate_is_the_summarys_not_a_moving_average_of_bursts() -> None:
    """A shard lands at once: rich's moving average then reads a burst (the issue saw 558.8
    videos/s beside a summary of 5.5). The bar shows videos over seconds since the work began."""
    clock = Clock()
    column = VideosPerSecond()
    progress = Progress(column, console=Console(quiet=True), get_time=clock)
    task = progress.add_task("extract", total=40)
    for shard in range(1, 4):  # 10 videos every 10 s, landing within 10 ms
        clock.now = 10.0 * shard
        for _ in range(10):
            clock.now += 0.001
            progress.advance(task, 1)
    assert column.render(progress.tasks[task]).plain == f"{30 / clock.now:.1f} videos/s"
    clock.now = 40.0
    progress.advance(task, 10)  # finished: the rate stays that of the whole work
    clock.now = 100.0
    assert column.render(progress.tasks[task]).plain == "1.0 videos/s"


def test_one_unmatched_line_is_one_line(video_folder: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    split.mkdir()
    (split / "trainlist01.txt").write_text("juggling/j2\n")
    (split / "vallist01.txt").write_text("riding bike/r2\n")
    (split / "testlist01.txt").write_text("fencing/f1\n")
    said = extract_in_this_process(video_folder, tmp_path / "feats.zarr", split=str(split))
    assert "2 videos found, 1 line names no file" in said
    assert "read trainlist01.txt (1 line), vallist01.txt (1 line), testlist01.txt (1 line)" in said


def test_a_finished_extraction_resumed_draws_no_empty_bar(video_folder: Path, tmp_path: Path):
    extract_in_this_process(video_folder, tmp_path / "feats.zarr")
    again = extract_in_this_process(video_folder, tmp_path / "feats.zarr")
    assert "extract canonical" not in again and "0/0" not in again


def test_a_long_title_is_wrapped_to_the_figures_width_never_cut() -> None:
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    query = "v_" + "VeryLongHMDBVideoName_(with)_#1!_sauté" * 5
    title = f"SA-CT cross-attention: query {query} → support {query[::-1]}"
    lines = title_lines(figure, title)
    assert len(lines) > 2 and "".join(lines).replace(" ", "") == title.replace(" ", "")
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    for line in lines:
        text = figure.text(0, 0, line, fontsize=9)
        assert text.get_window_extent(renderer).width <= figure.bbox.width
    assert title_lines(figure, "query a → support b") == ["query a → support b"]


def test_the_figure_grows_by_the_title_lines(tmp_path: Path) -> None:
    weights = np.full((1, 4, 4), 0.25, dtype=np.float32)
    frames = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    heights = {}
    for name, title in (("short", "query a → support b"), ("long", "query " + "x" * 300)):
        path = draw_attention(
            query_frames=frames,
            support_frames=frames,
            weights=weights,
            grid=(2, 2),
            patches=np.array([[0]]),
            path=tmp_path / f"{name}.png",
            title=title,
        )
        heights[name] = Image.open(path).size[1]
    assert heights["long"] > heights["short"]


def test_a_finished_run_resumed_never_reads_its_split(synthetic_store, tmp_path: Path) -> None:
    """What made a resumed `sact demo` read the features of every finished run again."""
    config = TrainConfig(
        feats=synthetic_store.location,
        split=synthetic_store.split,
        way=3,
        shot=1,
        query=1,
        frames=4,
        d_k=8,
        iterations=2,
        warmup=1,
        tasks_per_batch=1,
        val_every=2,
        val_episodes=4,
        out=str(tmp_path / "run"),
        device="cpu",
    )
    assert train(config).steps == 2
    again = train(TrainConfig(out=str(tmp_path / "run"), resume=True, device="cpu"))
    assert again.steps == 2 and "not read (nothing left to train)" in again.data
