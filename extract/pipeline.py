"""`sact extract`: videos in, a resumable feature set out.

    list videos ─▶ load backbone ─▶ create/open the feature set (once)
                                     │
    shards this process works on ─▶ DataLoader workers: decode + sample T frames + resize/crop
                                     │ (in video order, a few videos ahead of the model)
                                     ▼
                     batches of videos (never across a shard) ─▶ frozen backbone ─▶ float16
                                     │
                     whole shard buffered ─▶ FeatureSetWriter.write_shard (then its done markers)

Resume is the same command again: shards already done are skipped, shards with a failed video are
redone. Batches are formed in a fixed order (a shard's videos, failures left out, cut every
``batch_size``), so a redone shard is bitwise equal to the first attempt on the same machine.

Many processes (docs/LAB.md): under ``torchrun`` rank 0 creates or opens the feature set while the
others wait at a barrier, and each rank takes every ``WORLD_SIZE``-th shard still to do. Whatever
launched it, a process claims each shard (``extract.claims``) just before its videos are decoded
and skips a shard another live run holds, so independent runs on one feature set share the work.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from sact.extract.backbone import (
    FrozenBackbone,
    LoadedBackbone,
    Preprocessing,
    load_backbone,
)
from sact.extract.claims import SETUP, ClaimBook, RunInfo, shard_topic
from sact.extract.decode import FRAME_SAMPLING, DecodeError, sample_clip
from sact.extract.devices import resolve_device
from sact.extract.distributed import (
    Rank,
    all_ranks_agree,
    barrier,
    device_for,
    owned_shards,
    process_group,
    rank_from_env,
)
from sact.extract.errors import SactError
from sact.extract.store import (
    FeatureSetWriter,
    ShardResult,
    VideoRecord,
    check_feature_set_name,
    open_root,
)
from sact.extract.videos import VideoDiscoveryError, VideoList, list_videos, resolve_video_path

FEATURE_DTYPE = "float16"
# How long a run waits for another run that is creating or growing the same feature set.
SETUP_WAIT_S = 600.0
PROVENANCE_PACKAGES = ("sact", "torch", "timm", "zarr", "av", "numpy")


class ExtractConfigError(SactError):
    """Options that cannot work together; the message is one line for the user."""


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class ExtractConfig:
    """Everything `sact extract` needs; saved, resolved, in the feature set's attrs."""

    videos: Path
    out: str
    split: str | None = None
    backbone: str = "resnet50.tv_in1k"
    weights: Path | None = None
    random_init: bool = False
    frames: int = 8
    size: int | None = None  # crop size; None: the backbone's own
    grid: int | None = None  # pool the patch grid to grid×grid; None: keep the backbone's grid
    device: str = "auto"
    batch_size: int = 16  # videos per forward pass (batch_size·T frames)
    workers: int = field(default_factory=default_workers)  # decoding processes; 0: in-process
    name: str | None = None  # feature set name; None: derived from the config
    shard_size: int = 64  # videos per shard: the unit of work, writing and resume
    seed: int = 0  # the random init's seed

    def check(self) -> None:
        for option, value, least in (
            ("--frames", self.frames, 1),
            ("--batch-size", self.batch_size, 1),
            ("--shard-size", self.shard_size, 1),
            ("--workers", self.workers, 0),
        ):
            if value < least:
                raise ExtractConfigError(f"{option} must be at least {least}, got {value}")

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True)
class VideoFailure:
    video_id: str
    path: str
    reason: str


@dataclass
class ExtractSummary:
    """What a run did and where the feature set stands after it."""

    feature_set: str
    store: str
    videos: int  # in the feature set
    done: int  # extracted without error, this run or before
    failed: int
    pending: int
    extracted_now: int  # videos this run processed (successes and failures)
    failures: list[VideoFailure]
    unmatched: list[str]  # split lines that named no file
    seconds: float  # the whole run: listing, backbone loading, extraction
    work_seconds: float  # decoding, inference and writing only

    @property
    def videos_per_second(self) -> float:
        return self.extracted_now / self.work_seconds if self.work_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- the feature set's identity ----


def feature_set_identity(loaded: LoadedBackbone, *, frames: int) -> dict[str, Any]:
    """Everything that decides the stored values: two runs with equal identity may share a set."""
    prep = loaded.preprocessing
    return {
        "backbone": loaded.name,
        "weights_source": loaded.weights.source,
        "weights_sha256": loaded.weights.sha256,
        "input_size": prep.size,
        "resize_crop": prep.rule,
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "frames": frames,
        "frame_sampling": FRAME_SAMPLING,
        "grid": list(loaded.grid),
        "dim": loaded.dim,
        "dtype": FEATURE_DTYPE,
    }


def default_name(config: ExtractConfig, loaded: LoadedBackbone) -> str:
    """E.g. ``resnet50.tv_in1k-224px-8f``, ``-g4`` when pooled, a suffix for non-hub weights."""
    backbone = "".join(c if c.isalnum() or c in "._-" else "_" for c in config.backbone)
    name = f"{backbone}-{loaded.preprocessing.size}px-{config.frames}f"
    if config.grid is not None:
        name += f"-g{config.grid}"
    if loaded.weights.source == "random-init":
        name += "-randinit"
    elif loaded.weights.source == "file":
        name += f"-w{loaded.weights.sha256[:8]}"
    return name


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(config: ExtractConfig, frozen: FrozenBackbone) -> dict[str, Any]:
    """Where the features came from; informative, never compared between runs."""
    return {
        "versions": {package: _version(package) for package in PROVENANCE_PACKAGES},
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "videos_dir": str(config.videos.resolve()),
        "split": config.split,
        "device": str(frozen.device),
        "compute_dtype": frozen.compute_dtype,
        "weights_file": frozen.loaded.weights.file,
        "config": config.to_json(),
    }


def open_feature_set_for_writing(
    config: ExtractConfig, frozen: FrozenBackbone, video_list: VideoList, *, claims: ClaimBook
) -> FeatureSetWriter:
    """Create the feature set, or open it and append new videos; refuse a different config.

    Called once, before any work: under torchrun only rank 0 calls it. Holds the feature set's
    setup claim meanwhile, so two runs never create or grow it at the same time.
    """
    loaded = frozen.loaded
    root = open_root(config.out, mode="a")
    with claims.hold(SETUP, wait_s=SETUP_WAIT_S):
        return FeatureSetWriter.create_or_open(
            root,
            claims.feature_set,
            identity=feature_set_identity(loaded, frames=config.frames),
            provenance=provenance(config, frozen),
            videos=video_list.records,
            frames=config.frames,
            patches=loaded.grid[0] * loaded.grid[1],
            dim=loaded.dim,
            grid=loaded.grid,
            shard_size=config.shard_size,
        )


def open_for_this_rank(
    config: ExtractConfig, frozen: FrozenBackbone, video_list: VideoList, rank: Rank
) -> tuple[FeatureSetWriter, ClaimBook]:
    """Rank 0 creates or opens the feature set while the other ranks wait; then all open it."""
    name = check_feature_set_name(config.name or default_name(config, frozen.loaded))
    claims = ClaimBook(open_root(config.out, mode="a"), name, run=RunInfo.this_process())
    failure: SactError | None = None
    if rank.is_main:
        try:
            writer = open_feature_set_for_writing(config, frozen, video_list, claims=claims)
        except SactError as error:
            failure = error
    # Also the barrier: no rank goes on before rank 0 is done, and all learn whether it failed.
    if all_ranks_agree(rank, int(failure is not None)):
        raise failure or SactError(f"rank 0 could not open the feature set in {config.out}")
    if not rank.is_main:
        writer = FeatureSetWriter(open_root(config.out, mode="a")[name])  # type: ignore[arg-type]
    return writer, claims


def shards_for_this_process(writer: FeatureSetWriter, rank: Rank) -> list[int]:
    """The shards this process extracts: its share of the shards still to do, in order (all of
    them for a single process). Each is claimed only when its turn comes (``ClaimedOrder``)."""
    return owned_shards(writer.shards_to_do(), rank)


class ClaimedOrder:
    """The order the decoding loader reads the work list in, claiming shard by shard.

    ``shards`` are laid end to end in the work list. Iterating yields the work-list positions of
    each shard this run manages to claim, and records the shard in ``claimed`` first; a shard that
    another live run holds, or that another run finished meanwhile, is skipped. The loader draws
    positions only a few videos ahead of the model, so a run claims just ahead of its work and an
    independent run started later gets the shards this one has not reached.
    """

    def __init__(
        self,
        writer: FeatureSetWriter,
        shards: list[int],
        claims: ClaimBook,
        *,
        on_skip: Callable[[int], None],
    ) -> None:
        self.writer = writer
        self.shards = shards
        self.claims = claims
        self.on_skip = on_skip  # called with the number of videos of each skipped shard
        self.claimed: deque[int] = deque()
        self.held_elsewhere: dict[int, RunInfo] = {}

    def _take(self, shard: int) -> bool:
        topic = shard_topic(shard)
        if not self.writer.shard_needs_work(shard):  # finished by another run meanwhile
            return False
        if not self.claims.try_claim(topic):
            holder = self.claims.holder_of(topic)
            if holder is not None:
                self.held_elsewhere[shard] = holder
            return False
        if not self.writer.shard_needs_work(shard):
            self.claims.release(topic)
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        position = 0
        for shard in self.shards:
            start, end = self.writer.shard_bounds(shard)
            if self._take(shard):
                self.claimed.append(shard)
                yield from range(position, position + end - start)
            else:
                self.on_skip(end - start)
            position += end - start


# ---- decoding workers ----


@dataclass
class DecodedVideo:
    crops: torch.Tensor  # (T, 3, S, S) uint8; empty when the video failed
    frame_index: np.ndarray  # (T,) int64; -1 when the video failed
    num_frames: int
    error: str  # "" when the video decoded


class ClipDataset(Dataset[DecodedVideo]):
    """Video i of the work list, decoded, sampled and cropped; failures come back as reasons."""

    def __init__(
        self,
        *,
        videos_dir: Path,
        records: list[VideoRecord],
        frames: int,
        preprocessing: Preprocessing,
    ) -> None:
        self.videos_dir = videos_dir
        self.records = records
        self.frames = frames
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DecodedVideo:
        record = self.records[index]
        try:
            path = resolve_video_path(self.videos_dir, record.path)
            clip = sample_clip(path, self.frames)
            crops = self.preprocessing.resize_and_crop(clip.frames)  # (T, 3, S, S)
        except (DecodeError, VideoDiscoveryError) as error:
            return DecodedVideo(
                crops=torch.empty(0, dtype=torch.uint8),
                frame_index=np.full(self.frames, -1, dtype=np.int64),
                num_frames=0,
                error=str(error) or type(error).__name__,
            )
        return DecodedVideo(crops, clip.indices, clip.num_frames, "")


def _as_is(item: DecodedVideo) -> DecodedVideo:
    return item


def _single_thread_worker(_: int) -> None:
    # Each worker decodes one video at a time; torch threads would only fight each other.
    torch.set_num_threads(1)


def decoded_videos(
    dataset: ClipDataset, *, workers: int, pin_memory: bool, order: Iterable[int] | None = None
) -> Iterator[DecodedVideo]:
    """The dataset's videos in ``order`` (default: all, in order), decoded by ``workers``
    processes a few videos ahead."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        sampler=order,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        worker_init_fn=_single_thread_worker if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
    yield from loader


# ---- the work loop ----


class VideosPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- videos/s" if speed is None else f"{speed:.1f} videos/s", style="cyan")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]extract"),
        BarColumn(),
        MofNCompleteColumn(),
        VideosPerSecond(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _run_batch(
    frozen: FrozenBackbone, waiting: list[tuple[int, torch.Tensor]], *, into: np.ndarray
) -> None:
    """Run the backbone on the waiting videos' crops and put each video's tokens in place."""
    count, frames, patches, dim = len(waiting), *into.shape[1:]
    crops = torch.cat([clip for _, clip in waiting])  # (B*T, 3, S, S)
    tokens = frozen(crops).reshape(count, frames, patches, dim)  # (B, T, P, D)
    for (position, _), video_tokens in zip(waiting, tokens, strict=True):
        into[position] = video_tokens


def extract_shards(
    writer: FeatureSetWriter,
    shards: list[int],
    *,
    frozen: FrozenBackbone,
    config: ExtractConfig,
    progress: Progress,
    claims: ClaimBook,
) -> int:
    """Extract and write those of ``shards`` this run claims, in order; returns how many videos
    were processed."""
    work = [(shard, writer.records(shard)) for shard in shards]
    dataset = ClipDataset(
        videos_dir=config.videos,
        records=[record for _, records in work for record in records],
        frames=config.frames,
        preprocessing=frozen.loaded.preprocessing,
    )
    task = progress.add_task("extract", total=len(dataset), failed=0)
    failed = processed = 0
    patches, dim = writer.features.shape[2:]

    def skip(count: int) -> None:
        progress.update(task, total=progress.tasks[task].total - count)  # type: ignore[operator]

    order = ClaimedOrder(writer, shards, claims, on_skip=skip)
    stream = iter(
        decoded_videos(dataset, workers=config.workers, pin_memory=frozen.on_cuda, order=order)
    )
    records_of = dict(work)
    # The loader drew a shard's first position (claiming the shard) before yielding its video.
    while (first := next(stream, None)) is not None:
        shard = order.claimed.popleft()
        count = len(records_of[shard])
        processed += count
        features = np.zeros((count, config.frames, patches, dim), dtype=np.float16)
        frame_index = np.full((count, config.frames), -1, dtype=np.int32)
        num_frames = np.zeros(count, dtype=np.int32)
        errors = [""] * count
        waiting: list[tuple[int, torch.Tensor]] = []  # (position in shard, crops)
        for position, video in enumerate(chain([first], islice(stream, count - 1))):
            if video.error:
                errors[position] = video.error
                failed += 1
                progress.update(task, advance=1, failed=failed)
                continue
            frame_index[position] = video.frame_index
            num_frames[position] = video.num_frames
            waiting.append((position, video.crops))
            if len(waiting) == config.batch_size:
                _run_batch(frozen, waiting, into=features)
                progress.advance(task, len(waiting))
                waiting.clear()
        if waiting:
            _run_batch(frozen, waiting, into=features)
            progress.advance(task, len(waiting))
        topic = shard_topic(shard)
        if claims.still_holds(topic):
            writer.write_shard(shard, ShardResult(features, frame_index, num_frames, errors))
        else:  # taken over as stale (this run stalled): the other run writes it
            progress.console.print(f"shard {shard} was taken over by another run; not written")
        claims.release(topic)
    for holder in sorted(set(order.held_elsewhere.values()), key=lambda run: run.started):
        held = sum(holder == other for other in order.held_elsewhere.values())
        progress.console.print(
            f"{held} shard(s) skipped: being extracted by {holder.describe()}; "
            "run again once it has finished to pick up anything it left",
            highlight=False,
        )
    return processed


def summarize(
    writer: FeatureSetWriter,
    *,
    store: str,
    processed: int,
    unmatched: list[str],
    seconds: float,
    work_seconds: float,
) -> ExtractSummary:
    group = writer.group
    done = np.asarray(group["done"][:], dtype=bool)
    errors = [str(error) for error in group["error"][:]]
    ids = [str(video_id) for video_id in group["video_id"][:]]
    paths = [str(path) for path in group["path"][:]]
    failures = [
        VideoFailure(video_id=ids[i], path=paths[i], reason=errors[i])
        for i in range(len(ids))
        if done[i] and errors[i]
    ]
    return ExtractSummary(
        feature_set=group.basename,
        store=store,
        videos=len(ids),
        done=int(done.sum()) - len(failures),
        failed=len(failures),
        pending=int((~done).sum()),
        extracted_now=processed,
        failures=failures,
        unmatched=unmatched,
        seconds=round(seconds, 3),
        work_seconds=round(work_seconds, 3),
    )


def run_extraction(config: ExtractConfig, *, console: Console | None = None) -> ExtractSummary:
    """Extract every video of ``config`` not yet done into its feature set; see the module doc.

    Under torchrun this process extracts its rank's share, then waits for the other ranks.
    """
    rank = rank_from_env()
    with process_group(rank, device=device_for(rank, resolve_device(config.device))):
        return _extract_as_rank(config, rank, console=console)


def _extract_as_rank(
    config: ExtractConfig, rank: Rank, *, console: Console | None = None
) -> ExtractSummary:
    console = console or Console(stderr=True)
    if not rank.is_main:
        console = Console(stderr=True, quiet=True)  # one progress bar per job, not per rank
    started = time.perf_counter()
    config.check()
    video_list = list_videos(config.videos, config.split)
    device = device_for(rank, resolve_device(config.device))
    loaded = load_backbone(
        config.backbone,
        weights_file=config.weights,
        random_init=config.random_init,
        size=config.size,
        grid=config.grid,
        seed=config.seed,
    )
    frozen = FrozenBackbone(loaded, device=device)
    writer, claims = open_for_this_rank(config, frozen, video_list, rank)
    shards = shards_for_this_process(writer, rank)
    work_started = time.perf_counter()
    with claims.keep_alive(), _progress(console) as progress:
        processed = extract_shards(
            writer, shards, frozen=frozen, config=config, progress=progress, claims=claims
        )
    barrier(rank)  # the summary then counts every rank's shards
    finished = time.perf_counter()
    return summarize(
        writer,
        store=config.out,
        processed=processed,
        unmatched=video_list.unmatched,
        seconds=finished - started,
        work_seconds=finished - work_started,
    )


def summary_table(summary: ExtractSummary) -> Table:
    """The end-of-run table: counts, then the failed videos with their reasons."""
    table = Table(title=f"{summary.feature_set} in {summary.store}", show_header=True)
    table.add_column("videos", justify="right")
    table.add_column("done", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    table.add_column("pending", justify="right")
    table.add_column("this run", justify="right")
    table.add_column("videos/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(
        str(summary.videos),
        str(summary.done),
        str(summary.failed),
        str(summary.pending),
        str(summary.extracted_now),
        f"{summary.videos_per_second:.1f}",
        f"{summary.seconds:.1f}",
    )
    return table


def failures_table(summary: ExtractSummary, *, limit: int = 20) -> Table:
    table = Table(title=f"{summary.failed} failed videos (run again to retry them)")
    table.add_column("video")
    table.add_column("path")
    table.add_column("reason", style="red")
    for failure in summary.failures[:limit]:
        table.add_row(failure.video_id, failure.path, failure.reason)
    if summary.failed > limit:
        table.add_row("…", f"{summary.failed - limit} more", "see sact info --json")
    return table
