"""Where does `sact extract` spend its time, and how close does it come to its slower stage?
On clips that codecs compress as they compress real video (sact.testing.clips: SSv2's and
Kinetics' formats, within 2x of their bytes per second), and on the moving-noise clips the
benchmarks used before, side by side.

1. One process reaching T frames of each kind of clip, decoding + sampling + resizing + cropping
   as a decoding worker does: PyAV decoding through with one thread (the pipeline's way), with
   FFmpeg's own threads, seeking to the keyframe before each sampled frame, resizing in
   libswscale (``VideoFrame.reformat``) instead of torchvision after, and torchcodec's CPU
   decoder where it is installed.
2. On the SSv2-like clips, in one run, videos/s of
   (a) decoding alone: the pipeline's decoding workers (decode, sample T, resize + crop);
   (b) the backbone alone, on crops already in memory, two batches in flight;
   (c) `sact extract` end to end (`run_extraction` into a fresh store);
   the three taking turns for ``--repeats`` rounds, so that a shared machine's drifting load
   weighs on them alike, and (c) / min(a, b) per round: how close the overlap comes to the
   slower stage (goal: 0.8), with its median.

    .venv/bin/python bench/extraction.py               # this CPU: ResNet-50 224 px, sized by sact

``gpu_extraction`` is bench/gpu.py's extraction part (its own sizes, ``GPU_SCALES``): the same
on a GPU machine with every decoder installed there, CPU and GPU, the frames of the GPU decoder
against PyAV's, and SSv2-OTAM's 71,796 videos extrapolated from the best end-to-end rate.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import av
import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from sact.common.devices import resolve_device, synchronize
from sact.extract.backbone import FrozenBackbone, Preprocessing, load_backbone
from sact.extract.clips import ClipDataset, decoded_videos
from sact.extract.config import ExtractConfig
from sact.extract.decode import num_frames, sample_clip
from sact.extract.decoders import (
    AUTO_ORDER,
    PYAV,
    PYNVVIDEOCODEC,
    TORCHCODEC_CUDA,
    Decoder,
    PyAVDecoder,
    compare_decoders,
    decoder_problem,
    resolve_decoder,
)
from sact.extract.pipeline import ExtractSummary, run_extraction
from sact.extract.sizing import available_cores, plan_pipeline
from sact.extract.videos import list_videos
from sact.store.sampling import segment_centers
from sact.testing.clips import FORMATS, SSV2, write_noise_clip, write_realistic_clip

OTAM_VIDEOS = 71_796  # SSv2 with the OTAM split: train 67,013 + val 1,926 + test 2,857
GOAL_MINUTES = 5.0  # issue 22: SSv2-OTAM extracted in 5 minutes on one GPU node
GPU_DECODERS = (TORCHCODEC_CUDA, PYNVVIDEOCODEC)
KINDS = ("ssv2", "kinetics", "noise")  # the clips of part 1
NOISE_FRAMES = 45  # the old benchmark's clips: 45 frames of SSv2's size

console = Console()


# ---- clips ----


def write_clip(path: Path, kind: str, seed: int, frames: int | None) -> Path:
    if kind == "noise":
        return write_noise_clip(
            path, frames=frames or NOISE_FRAMES, width=SSV2.width, height=SSV2.height, seed=seed
        )
    return write_realistic_clip(path, FORMATS[kind], seed=seed, frames=frames)


def write_clips(
    folder: Path, kind: str, *, count: int, workers: int, frames: int | None = None
) -> list[Path]:
    """``count`` clips of ``kind`` (seeds 0..count-1) in ``folder``, encoded by ``workers``
    processes."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".webm" if kind == "noise" else FORMATS[kind].suffix
    paths = [folder / f"{kind}{seed:04d}{suffix}" for seed in range(count)]
    if workers < 2:
        return [write_clip(path, kind, seed, frames) for seed, path in enumerate(paths)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [
            pool.submit(write_clip, path, kind, seed, frames) for seed, path in enumerate(paths)
        ]
        return [job.result() for job in jobs]


def video_folder(clips: list[Path], folder: Path, *, videos: int) -> Path:
    """``videos`` files in 4 class folders, copies of ``clips`` in turn (a benchmark needs more
    videos than it can afford to encode)."""
    for index in range(videos):
        source = clips[index % len(clips)]
        target = folder / f"class{index % 4}" / f"v{index:05d}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder


# ---- 1. one process, each way of reaching T frames ----


def swscale_crops(path: Path, frames: int, preprocessing: Preprocessing) -> torch.Tensor:
    """(T, 3, S, S): decode through with one thread, resize each kept frame in libswscale while
    converting it to RGB, then center crop: the resize inside the decoder."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        decoded = list(container.decode(stream))
    short, long = sorted((decoded[0].height, decoded[0].width))
    resized_long = int(preprocessing.resize_to * long / short)  # as torchvision's resize
    width, height = (
        (resized_long, preprocessing.resize_to)
        if decoded[0].width >= decoded[0].height
        else (preprocessing.resize_to, resized_long)
    )
    kept = [decoded[index] for index in segment_centers(len(decoded), frames)]
    images = np.stack(
        [
            frame.reformat(
                width=width, height=height, format="rgb24", interpolation="BICUBIC"
            ).to_ndarray()
            for frame in kept
        ]
    )  # (T, H', W', 3)
    top, left = (height - preprocessing.size) // 2, (width - preprocessing.size) // 2
    crops = images[:, top : top + preprocessing.size, left : left + preprocessing.size]
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)


def decoder_crops(decoder: Decoder, frames: int, preprocessing: Preprocessing) -> Callable:
    def crops(path: Path) -> torch.Tensor:
        clip = decoder.sample(path, frames, segment_centers)
        cropped = preprocessing.resize_and_crop_images(clip.images)  # (T, 3, S, S)
        if cropped.is_cuda:
            torch.cuda.synchronize(cropped.device)  # timed to the end of its GPU work
        return cropped

    return crops


def one_process_ways(frames: int, preprocessing: Preprocessing) -> dict[str, Callable]:
    """Each way of turning a file into the backbone's T crops, in one process."""

    def seeking(path: Path) -> torch.Tensor:
        clip = sample_clip(path, frames, strategy="seek", threads=1)
        return preprocessing.resize_and_crop(clip.frames)

    ways = {
        "PyAV, decode through, 1 thread (the pipeline's)": decoder_crops(
            PyAVDecoder(threads=1), frames, preprocessing
        ),
        "PyAV, decode through, FFmpeg's threads": decoder_crops(
            PyAVDecoder(threads=0), frames, preprocessing
        ),
        "PyAV, seek to the keyframe before each frame": seeking,
        "PyAV, resize in libswscale": lambda path: swscale_crops(path, frames, preprocessing),
    }
    if decoder_problem("torchcodec-cpu", torch.device("cpu")) is None:
        torchcodec = resolve_decoder("torchcodec-cpu", torch.device("cpu"))
        ways[f"torchcodec on the CPU ({torchcodec.version})"] = decoder_crops(
            torchcodec, frames, preprocessing
        )
    return ways


def interleaved_rates(
    ways: dict[str, Callable], by_kind: dict[str, list[Path]], *, repeats: int
) -> dict[tuple[str, str], float]:
    """Videos/s of each way on each kind of clip. Every pass times each way once in turn, so a
    shared machine's load falls on all of them alike; each rate is from its median pass."""
    for way in ways.values():
        for paths in by_kind.values():
            way(paths[0])  # warm-up: libraries, caches
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for kind, paths in by_kind.items():
            for name, way in ways.items():
                started = time.perf_counter()
                for path in paths:
                    way(path)
                seconds.setdefault((name, kind), []).append(time.perf_counter() - started)
    return {
        (name, kind): len(by_kind[kind]) / statistics.median(passes)
        for (name, kind), passes in seconds.items()
    }


def videos_per_second(way: Callable, paths: list[Path], *, repeats: int) -> float:
    way(paths[0])  # warm-up: libraries, caches
    started = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            way(path)
    return repeats * len(paths) / (time.perf_counter() - started)


# ---- 2. (a) decoding alone, (b) the backbone alone, (c) end to end ----


def decode_only(dataset: ClipDataset, *, workers: int, device: torch.device) -> float:
    """Videos/s of the pipeline's decoding (processes, or GPU sessions) alone."""
    synchronize(device)
    started = time.perf_counter()
    for video in decoded_videos(dataset, workers=workers):
        assert not video.error, video.error
    synchronize(device)
    return len(dataset) / (time.perf_counter() - started)


def backbone_only(frozen: FrozenBackbone, crops: list[torch.Tensor], *, batch_size: int) -> float:
    """Videos/s of the backbone on crops in memory, two batches in flight as in the pipeline."""
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


@dataclass(frozen=True)
class Stage:
    """One benchmark's backbone and sizes."""

    backbone: str
    size: int
    frames: int
    shard_size: int


def whole(
    stage: Stage, videos: Path, out: Path, *, decoder: str, device: torch.device
) -> ExtractSummary:
    """`sact extract` end to end into a fresh store, sized by sact for this machine."""
    config = ExtractConfig(
        videos=videos,
        out=str(out),
        backbone=stage.backbone,
        random_init=True,
        frames=stage.frames,
        size=stage.size,
        device=str(device),
        decoder=decoder,
        shard_size=stage.shard_size,
    )
    return run_extraction(config, console=Console(quiet=True))


def stage_rates(
    stage: Stage,
    videos: Path,
    scratch: Path,
    *,
    decoder: str,
    device: torch.device,
    repeats: int,
    distinct_clips: int,
) -> dict[str, Any]:
    """(a), (b) and (c) in one run on ``videos`` (copies of ``distinct_clips`` clips), the
    pipeline sized by sact (extract/sizing.py)."""
    records = list_videos(videos).records
    loaded = load_backbone(stage.backbone, random_init=True, size=stage.size)
    frozen = FrozenBackbone(loaded, device=device)
    chosen = resolve_decoder(decoder, device)
    plan = plan_pipeline(
        decoder=chosen.name,
        decoder_version=chosen.version,
        decoder_on_gpu=chosen.on_gpu,
        device=device,
        frames=stage.frames,
    )
    dataset = ClipDataset(
        videos_dir=videos,
        records=records,
        frames=stage.frames,
        preprocessing=loaded.preprocessing,
        decoder=chosen,
    )
    # the backbone on the crops of the distinct clips, in turn (decoding them all here would take
    # longer than the rest of the benchmark)
    distinct = [dataset[index].crops for index in range(min(distinct_clips, len(dataset)))]
    crops = list(itertools.islice(itertools.cycle(distinct), len(dataset)))
    batch = min(plan.batch_size, stage.shard_size)  # a batch never spans two shards
    # (a), (b) and (c) take turns, round after round: a shared machine's load, which drifts over
    # minutes, then weighs on the three alike, and each round's ratio compares its own three
    rounds = []
    for repeat in range(repeats):
        decode_rate = decode_only(dataset, workers=plan.workers, device=device)
        backbone_rate = backbone_only(frozen, crops, batch_size=batch)
        out = scratch / f"{chosen.name}-{repeat}.zarr"
        run = whole(stage, videos, out, decoder=decoder, device=device)
        rounds.append((decode_rate, backbone_rate, run.videos_per_second, run.over_bound))
    del crops, distinct
    decode_rate, backbone_rate, whole_rate = (
        statistics.median(values[i] for values in rounds) for i in range(3)
    )
    return {
        "decoder": chosen.name,
        "decoder_version": chosen.version,
        "plan": plan.describe(),
        "videos": len(records),
        "decode_videos_per_second": decode_rate,
        "backbone_videos_per_second": backbone_rate,
        "extract_videos_per_second": whole_rate,
        "rounds": [
            {"decode": a, "backbone": b, "extract": c, "extract_over_bound": c / min(a, b)}
            for a, b, c, _ in rounds
        ],
        "extract_over_bound": statistics.median(c / min(a, b) for a, b, c, _ in rounds),
        "extract_over_own_bounds": statistics.median(own for *_, own in rounds),
        "otam_minutes": OTAM_VIDEOS / whole_rate / 60,
    }


# ---- bench/gpu.py's extraction part ----


@dataclass(frozen=True)
class GpuScale:
    """bench/gpu.py's sizes for its extraction part."""

    clips: int  # distinct SSv2-like clips encoded
    videos: int  # files extracted (the clips, copied)
    kinetics_clips: int  # Kinetics-like clips, decoded once per decoder
    kinetics_frames: int | None  # frames per Kinetics-like clip (None: 10 s)
    compared_clips: int  # clips of each format whose frames the GPU decoder is checked on
    stage: Stage


GPU_SCALES = {
    "ssv2": GpuScale(
        clips=64,
        videos=3072,
        kinetics_clips=16,
        kinetics_frames=None,
        compared_clips=4,
        stage=Stage(backbone="resnet50.tv_in1k", size=224, frames=8, shard_size=64),
    ),
    "cpu": GpuScale(
        clips=4,
        videos=16,
        kinetics_clips=1,
        kinetics_frames=None,
        compared_clips=1,
        stage=Stage(backbone="resnet50.tv_in1k", size=224, frames=8, shard_size=8),
    ),
    "tiny": GpuScale(
        clips=2,
        videos=8,
        kinetics_clips=1,
        kinetics_frames=12,
        compared_clips=1,
        stage=Stage(backbone="resnet10t", size=32, frames=4, shard_size=4),
    ),
}


def installed_decoders(device: torch.device) -> list[str]:
    """The decoders that can run here, slowest first as they are listed (PyAV always)."""
    return [name for name in reversed(AUTO_ORDER) if decoder_problem(name, device) is None]


def gpu_extraction(
    scale_name: str, device: torch.device, scratch: Path, *, say: Callable[[str], None]
) -> dict[str, Any]:
    """bench/gpu.py's part (a): on SSv2-like clips, each installed decoder's (a), (b), (c) and
    the projected SSv2-OTAM time; Kinetics-like clips decoded alone by each decoder; the GPU
    decoder's frames and features against PyAV's. ``say`` reports progress."""
    scale = GPU_SCALES[scale_name]
    workers = max(1, available_cores() - 2)
    say(f"(a) encoding {scale.clips} SSv2-like and {scale.kinetics_clips} Kinetics-like clips")
    ssv2 = write_clips(scratch / "ssv2", "ssv2", count=scale.clips, workers=workers)
    kinetics = write_clips(
        scratch / "kinetics",
        "kinetics",
        count=scale.kinetics_clips,
        workers=workers,
        frames=scale.kinetics_frames,
    )
    videos = video_folder(ssv2, scratch / "videos", videos=scale.videos)
    results: dict[str, Any] = {
        "videos": scale.videos,
        "clips": {
            "ssv2_clips": len(ssv2),
            "ssv2_mean_bytes": statistics.mean(path.stat().st_size for path in ssv2),
            "kinetics_clips": len(kinetics),
            "kinetics_mean_bytes": statistics.mean(path.stat().st_size for path in kinetics),
        },
        "decoders": {},
    }
    for name in installed_decoders(device):
        say(f"(a) {name}: decoding alone, backbone alone, sact extract")
        try:  # one decoder failing on a machine first seen here must not lose the others
            results["decoders"][name] = decoder_rates(
                scale, name, videos, kinetics, device, scratch
            )
        except Exception as error:
            results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
    loaded = load_backbone(scale.stage.backbone, random_init=True, size=scale.stage.size)
    frozen = FrozenBackbone(loaded, device=device)
    for name in GPU_DECODERS:
        if name not in results["decoders"]:
            continue
        say(f"(a) {name}: its frames and features against PyAV's")
        compared = ssv2[: scale.compared_clips] + kinetics[: scale.compared_clips]
        try:
            difference = compare_decoders(
                resolve_decoder(PYAV, device),
                resolve_decoder(name, device),
                compared,
                frames=scale.stage.frames,
                features=lambda crops: torch.from_numpy(frozen(crops.to(device))),
                preprocessing=loaded.preprocessing,
            )
            results["decoders"][name]["against_pyav"] = difference.to_json()
        except Exception as error:
            results.setdefault("errors", {})[f"{name} against pyav"] = f"{error}"
    if not results["decoders"]:
        raise RuntimeError(f"no decoder could extract: {results.get('errors')}")
    best = max(results["decoders"].values(), key=lambda rates: rates["extract_videos_per_second"])
    results["best_decoder"] = best["decoder"]
    results["otam_minutes"] = best["otam_minutes"]
    results["goal_minutes"] = GOAL_MINUTES
    return results


def decoder_rates(
    scale: GpuScale,
    name: str,
    videos: Path,
    kinetics: list[Path],
    device: torch.device,
    scratch: Path,
) -> dict[str, Any]:
    """One decoder's (a), (b), (c) on the SSv2-like videos, and its rate on the Kinetics-like
    clips in one stream (one process or one GPU session)."""
    rates = stage_rates(
        scale.stage,
        videos,
        scratch / "stores",
        decoder=name,
        device=device,
        repeats=1,
        distinct_clips=scale.clips,
    )
    decoder = resolve_decoder(name, device)
    loaded = load_backbone(scale.stage.backbone, random_init=True, size=scale.stage.size)
    kinetics_crops = decoder_crops(decoder, scale.stage.frames, loaded.preprocessing)
    rates["kinetics_one_stream_videos_per_second"] = videos_per_second(
        kinetics_crops, kinetics, repeats=1
    )
    return rates


def gpu_report_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """bench/gpu.py's table rows for its extraction part: (measure, value, bound, ratio)."""
    rate = "{:.1f} videos/s"
    rows = []
    for name, rates in results["decoders"].items():
        rows += [
            (f"(a) {name}: decoding alone", rate.format(rates["decode_videos_per_second"]), "", ""),
            (
                f"(a) {name}: backbone alone",
                rate.format(rates["backbone_videos_per_second"]),
                "",
                "",
            ),
            (
                f"(a) {name}: sact extract, end to end",
                rate.format(rates["extract_videos_per_second"]),
                "min(decode, backbone)",
                f"{rates['extract_over_bound']:.2f}",
            ),
            (
                f"(a) {name}: Kinetics-like clips, one stream",
                rate.format(rates["kinetics_one_stream_videos_per_second"]),
                "",
                "",
            ),
        ]
        if "against_pyav" in rates:
            difference = rates["against_pyav"]
            rows.append(
                (
                    f"(a) {name} vs PyAV: max / mean |pixel|, features",
                    f"{difference['max_abs_pixel']} / {difference['mean_abs_pixel']:.2f}, "
                    f"{difference['feature_relative']:.4f}",
                    "tolerance (extract/decoders.py)",
                    "within" if difference["within_tolerance"] else "OUTSIDE",
                )
            )
    for name, error in results.get("errors", {}).items():
        rows.append((f"(a) {name}: failed", error.splitlines()[0][:80], "", ""))
    rows.append(
        (
            f"(a) SSv2-OTAM, 71,796 videos ({results['best_decoder']})",
            f"{results['otam_minutes']:.1f} min",
            f"goal {results['goal_minutes']:.0f} min",
            "",
        )
    )
    return rows


# ---- the CPU benchmark ----


def main(
    clips: Annotated[int, typer.Option(help="Distinct clips of each kind.")] = 4,
    videos: Annotated[int, typer.Option(help="SSv2-like files extracted in part 2.")] = 16,
    backbone: str = "resnet50.tv_in1k",
    size: int = 224,
    frames: int = 8,
    shard_size: int = 8,
    decoder: Annotated[str, typer.Option(help="Part 2's decoder (sact extract --decoder).")] = (
        "auto"
    ),
    device: str = "auto",
    repeats: Annotated[int, typer.Option(help="Rounds of part 2, passes over part 1's clips.")] = 3,
) -> None:
    resolved = resolve_device(device)
    load_before = os.getloadavg()[0]
    loaded = load_backbone(backbone, random_init=True, size=size)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        by_kind = {kind: write_clips(folder / kind, kind, count=clips, workers=1) for kind in KINDS}
        ways = one_process_ways(frames, loaded.preprocessing)
        table = Table(
            title=f"1. one process: file -> {frames} crops of {size} px, videos/s "
            f"(load {os.getloadavg()[0]:.1f})"
        )
        table.add_column("way")
        for kind in KINDS:
            table.add_column(kind, justify="right")
        rates_by_way = interleaved_rates(ways, by_kind, repeats=repeats)
        for way_name in ways:
            table.add_row(way_name, *(f"{rates_by_way[way_name, kind]:.1f}" for kind in KINDS))
        sizes = Table(title="the clips: mean size and bytes per second of video")
        for column in ("kind", "frames", "KB", "KB/s", "the dataset's KB/s"):
            sizes.add_column(column, justify="left" if column == "kind" else "right")
        for kind, paths in by_kind.items():
            counts = [num_frames(path) for path in paths]
            fps = FORMATS[kind].fps if kind in FORMATS else SSV2.fps
            kilobytes = statistics.mean(path.stat().st_size for path in paths) / 1e3
            per_second = statistics.mean(
                path.stat().st_size / (count / fps)
                for path, count in zip(paths, counts, strict=True)
            )
            real = f"{FORMATS[kind].real_bytes_per_second / 1e3:.1f}" if kind in FORMATS else "-"
            sizes.add_row(kind, f"{statistics.mean(counts):.0f}", f"{kilobytes:.0f}",
                          f"{per_second / 1e3:.1f}", real)  # fmt: skip
        console.print(sizes)
        console.print(table)

        stage = Stage(backbone=backbone, size=size, frames=frames, shard_size=shard_size)
        ssv2_videos = video_folder(by_kind["ssv2"], folder / "videos", videos=videos)
        rates = stage_rates(
            stage,
            ssv2_videos,
            folder / "stores",
            decoder=decoder,
            device=resolved,
            repeats=repeats,
            distinct_clips=clips,
        )
    pipeline = Table(
        title=f"2. {rates['videos']} SSv2-like videos, {backbone} {size} px, T={frames}, "
        f"shards of {shard_size}, {resolved}: {rates['plan']}"
    )
    pipeline.add_column("stage")
    pipeline.add_column("videos/s", justify="right")
    pipeline.add_row("(a) decoding alone", f"{rates['decode_videos_per_second']:.1f}")
    pipeline.add_row("(b) backbone alone", f"{rates['backbone_videos_per_second']:.1f}")
    pipeline.add_row(
        "(c) sact extract, end to end (median)", f"{rates['extract_videos_per_second']:.1f}"
    )
    console.print(pipeline)
    rounds = Table(title="2. round by round: (a), (b), (c) take turns")
    for column in ("round", "(a) videos/s", "(b) videos/s", "(c) videos/s", "(c) / min(a, b)"):
        rounds.add_column(column, justify="right")
    for index, numbers in enumerate(rates["rounds"], start=1):
        rounds.add_row(
            str(index),
            *(f"{numbers[key]:.2f}" for key in ("decode", "backbone", "extract")),
            f"{numbers['extract_over_bound']:.2f}",
        )
    console.print(rounds)
    console.print(
        f"(c) / min(a, b), median of the rounds: {rates['extract_over_bound']:.2f}; against the "
        f"bounds each run measured itself (its summary): {rates['extract_over_own_bounds']:.2f}; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )


if __name__ == "__main__":
    typer.run(main)
