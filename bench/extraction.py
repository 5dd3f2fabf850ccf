"""Where does `sact extract` spend its time? Videos/s of, on the same videos in one run:

  (a) decode only: the DataLoader workers alone (decode, sample T frames, resize + crop);
  (b) backbone only: the frozen backbone on crops already in memory, same batch size;
  (c) the whole extraction (`run_extraction` into a fresh store: a + b + writing, overlapped),
      twice: shards written in the loop (``write_queue=0``, as before issue 15) and by the
      background writer (``write_queue=2``), alternating ``--repeats`` times, median of each.

A pipeline that overlaps well gets (c) close to min(a, b); the ratio (c)/min(a, b) says how close.
(b) keeps two batches in flight (``FrozenBackbone.submit``), as the pipeline does.

    .venv/bin/python bench/extraction.py                                 # this CPU, small backbone
    .venv/bin/python bench/extraction.py --backbone resnet50.tv_in1k --size 224 --frames 8 \\
        --videos-count 256 --batch-size 32 --workers 8 --device cuda     # the GPU goal: c >= 0.8 b

Without ``--videos DIR`` it encodes synthetic h264 clips (like Kinetics/SSv2 clip lengths).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from sact.common.devices import resolve_device
from sact.demo.synthetic import encode_video
from sact.extract.backbone import FrozenBackbone, load_backbone
from sact.extract.clips import ClipDataset, decoded_videos
from sact.extract.config import ExtractConfig
from sact.extract.decode import Strategy, sample_clip
from sact.extract.pipeline import run_extraction
from sact.extract.videos import list_videos

console = Console()


def synthetic_videos(folder: Path, *, count: int, frames: int, width: int, height: int) -> Path:
    """``count`` h264 clips of moving noise blocks, one seeded generator per clip."""
    for index in range(count):
        rng = np.random.default_rng(index)
        blocks = rng.integers(0, 256, size=(frames, height // 8, width // 8, 3), dtype=np.uint8)
        clip = blocks.repeat(8, axis=1).repeat(8, axis=2)  # (frames, height, width, 3)
        path = folder / f"class{index % 4}" / f"v{index:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_video(path, clip)
    return folder


def decode_only(dataset: ClipDataset, *, workers: int) -> float:
    started = time.perf_counter()
    for video in decoded_videos(dataset, workers=workers):
        assert not video.error, video.error
    return len(dataset) / (time.perf_counter() - started)


def strategy_rate(paths: list[Path], *, frames: int, strategy: Strategy) -> float:
    """Videos/s of one process sampling T frames with a fixed strategy (no resize, no workers)."""
    started = time.perf_counter()
    for path in paths:
        sample_clip(path, frames, strategy=strategy)
    return len(paths) / (time.perf_counter() - started)


def backbone_only(frozen: FrozenBackbone, crops: list[torch.Tensor], *, batch_size: int) -> float:
    frozen(torch.cat(crops[:batch_size]))  # warm-up: kernel selection, allocator
    started = time.perf_counter()
    in_flight = None
    for start in range(0, len(crops), batch_size):
        pending = frozen.submit(crops[start : start + batch_size])
        if in_flight is not None:
            in_flight.result()  # ends with the copy to the host
        in_flight = pending
    if in_flight is not None:
        in_flight.result()
    return len(crops) / (time.perf_counter() - started)


def main(
    videos: Annotated[Path | None, typer.Option(help="Videos to use; default: synthetic.")] = None,
    videos_count: Annotated[int, typer.Option(help="Synthetic videos to encode.")] = 32,
    video_frames: Annotated[int, typer.Option(help="Frames per synthetic video.")] = 48,
    video_size: Annotated[str, typer.Option(help="Synthetic video WxH.")] = "320x240",
    backbone: str = "resnet18",
    size: int = 112,
    frames: int = 8,
    batch_size: int = 8,
    workers: int = 1,
    device: str = "auto",
    shard_size: Annotated[
        int, typer.Option(help="Videos per shard (several shards: overlap).")
    ] = 8,
    repeats: Annotated[int, typer.Option(help="Runs of (c) per writer mode, alternating.")] = 2,
) -> None:
    width, height = (int(side) for side in video_size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        if videos is None:
            videos = synthetic_videos(
                Path(scratch) / "videos",
                count=videos_count,
                frames=video_frames,
                width=width,
                height=height,
            )
        records = list_videos(videos).records
        loaded = load_backbone(backbone, random_init=True, size=size)
        frozen = FrozenBackbone(loaded, device=resolve_device(device))
        dataset = ClipDataset(
            videos_dir=videos, records=records, frames=frames, preprocessing=loaded.preprocessing
        )

        paths = [videos / record.path for record in records]
        decode_all_rate = strategy_rate(paths, frames=frames, strategy="decode_all")
        seek_rate = strategy_rate(paths, frames=frames, strategy="seek")
        decode_rate = decode_only(dataset, workers=workers)
        crops = [dataset[index].crops for index in range(len(dataset))]
        backbone_rate = backbone_only(frozen, crops, batch_size=batch_size)
        whole_rates: dict[int, list[float]] = {0: [], 2: []}  # write_queue -> videos/s
        writes: dict[int, list[tuple[float, float, float]]] = {0: [], 2: []}  # write, wait, run s
        for repeat in range(repeats):
            for write_queue in whole_rates:
                config = ExtractConfig(
                    videos=videos,
                    out=str(Path(scratch) / f"feats-{write_queue}-{repeat}.zarr"),
                    backbone=backbone,
                    random_init=True,
                    frames=frames,
                    size=size,
                    device=device,
                    batch_size=batch_size,
                    workers=workers,
                    shard_size=shard_size,
                    write_queue=write_queue,
                )
                summary = run_extraction(config, console=Console(quiet=True))
                whole_rates[write_queue].append(summary.videos_per_second)
                writes[write_queue].append(
                    (summary.write_seconds, summary.write_wait_seconds, summary.work_seconds)
                )
        inline_rate, background_rate = (statistics.median(whole_rates[q]) for q in (0, 2))

    table = Table(
        title=f"extract: {len(records)} videos, {backbone} {size}px, T={frames}, "
        f"batch {batch_size} videos, shards of {shard_size}, {workers} workers, {frozen.device}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    table.add_column("stage")
    table.add_column("videos/s", justify="right")
    table.add_column("frames/s", justify="right")
    table.add_column("÷ (b)", justify="right")
    for stage, rate in (
        ("(a) decode + sample + crop only", decode_rate),
        ("(b) backbone only (crops in memory)", backbone_rate),
        ("(c) whole extract, shards written in the loop", inline_rate),
        ("(c) whole extract, background writer (2 queued)", background_rate),
    ):
        table.add_row(stage, f"{rate:.1f}", f"{rate * frames:.0f}", f"{rate / backbone_rate:.2f}")
    console.print(table)
    strategies = Table(title="reaching T frames, one process, same videos")
    strategies.add_column("strategy")
    strategies.add_column("videos/s", justify="right")
    strategies.add_row("decode everything, keep T", f"{decode_all_rate:.1f}")
    strategies.add_row("seek to each of the T frames", f"{seek_rate:.1f}")
    console.print(strategies)
    bound = min(decode_rate, backbone_rate)
    for label, rate in (("in the loop", inline_rate), ("background", background_rate)):
        console.print(
            f"writes {label}: (c) / min(a, b) = {rate / bound:.2f}   "
            f"(c) / (b) = {rate / backbone_rate:.2f}"
        )
    waits = Table(title="(c)'s shard writes, median over the runs")
    for column in ("shards written", "writing s", "loop waited s", "run s", "waited ÷ run"):
        waits.add_column(column, justify="left" if column == "shards written" else "right")
    for queue, label in ((0, "in the loop"), (2, "background, 2 queued")):
        write_s, wait_s, run_s = (
            statistics.median(run[i] for run in writes[queue]) for i in range(3)
        )
        waits.add_row(
            label, f"{write_s:.2f}", f"{wait_s:.2f}", f"{run_s:.2f}", f"{wait_s / run_s:.3f}"
        )
    console.print(waits)
    console.print(
        "(c) runs, videos/s: "
        + "; ".join(
            f"write_queue={queue}: " + ", ".join(f"{rate:.1f}" for rate in rates)
            for queue, rates in whole_rates.items()
        )
    )


if __name__ == "__main__":
    typer.run(main)
