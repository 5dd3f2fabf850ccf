"""`sact extract`: videos in, a resumable feature set out.

    list videos ─▶ load backbone ─▶ create/open the feature set (once)
                                     │
    shards this process works on ─▶ DataLoader workers: decode + sample T frames + resize/crop
                                     │ (in video order, a few videos ahead of the model)
                                     ▼
                     batches of videos (never across a shard) ─▶ frozen backbone ─▶ float16
                                     │ (two batches in flight on a GPU: BatchLoop)
                     whole shard buffered ─▶ ShardWriter thread, a short queue behind:
                                             FeatureSetWriter.write_shard, then its claim released

Views (extract/views.py): the canonical view first, then each augmented view the run asks for,
each as its own pass over its shards, with its own done markers and claims; a view added later is
extracted without touching the canonical one. Before any work the run tells ``on_plan``, per view,
the videos still to extract and the bytes they will take (`sact extract` prints it).

Resume is the same command again: shards already done are skipped, shards with a failed video are
redone. Batches are formed in a fixed order (a shard's videos, failures left out, cut every
``batch_size``), so on the CPU a redone shard is bitwise equal to the first attempt on the same
machine; on a GPU it is equal within floating-point tolerance (cuDNN may pick other kernels).

Many processes (docs/LAB.md): under ``torchrun`` rank 0 creates or opens the feature set while the
others wait, and each rank takes every ``WORLD_SIZE``-th shard still to do. Whatever
launched it, a process claims each shard (``extract.claims``) just before its videos are decoded
and skips a shard another live run holds, so independent runs on one feature set share the work.

This module is the loop; around it: ``extract.config`` (the options, the feature set's identity and
provenance), ``extract.clips`` (the decoding loader and its claimed shard order) and
``extract.tables`` (the summary the command prints).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from sact.common.claims import SETUP, ClaimBook, RunInfo
from sact.common.devices import resolve_device
from sact.common.distributed import Job, Rank, device_for, joined, owned_shards, rank_from_env
from sact.common.errors import SactError, is_storage_error, storage_error_reason
from sact.common.options import Checked, checked
from sact.common.progress import progress_display
from sact.common.words import agreeing, counted
from sact.data.split_lists import SPLIT_RECORD, SplitRecord
from sact.extract.backbone import FrozenBackbone, PendingTokens, load_backbone
from sact.extract.clips import ClaimedOrder, ClipDataset, check_shared_memory, decoded_videos
from sact.extract.config import (
    ExtractConfig,
    default_name,
    feature_set_identity,
    provenance,
    view_provenance,
)
from sact.extract.decoders import Decoder, resolve_decoder
from sact.extract.shard_writer import ShardWriter
from sact.extract.sizing import PipelinePlan, plan_pipeline
from sact.extract.videos import VideoList, list_videos
from sact.extract.views import ViewSpec
from sact.store.feature_set import CANONICAL, VideoFailure, check_feature_set_name
from sact.store.zarr_store import (
    FeatureSetWriter,
    ShardResult,
    ZarrFeatureSet,
    open_root,
)


class ExtractionStopped(SactError):
    """The store could not be written (no space left, object storage unreachable); one line."""


# How long a run waits for another run that is creating or growing the same feature set.
SETUP_WAIT_S = 600.0


@dataclass
class ViewSummary:
    """One view after a run: its counts, and what this run spent on it."""

    view: str
    done: int
    failed: int
    pending: int
    extracted_now: int
    seconds: float  # decoding, inference and writing of this view in this run

    @property
    def seconds_per_video(self) -> float:
        return self.seconds / self.extracted_now if self.extracted_now else 0.0


@dataclass
class StageTimes:
    """Busy seconds of the two stages over the videos of a run: each decoding worker's, summed,
    and the backbone's (device time on a GPU). What each stage alone could deliver follows."""

    decoded: int = 0
    decode_seconds: float = 0.0
    computed: int = 0  # videos through the backbone
    backbone_seconds: float = 0.0

    def decode_rate(self, workers: int) -> float:
        """Videos/s the decoding workers would deliver if never kept waiting."""
        if not self.decoded or self.decode_seconds <= 0:
            return 0.0
        return max(1, workers) * self.decoded / self.decode_seconds

    def backbone_rate(self) -> float:
        return self.computed / self.backbone_seconds if self.backbone_seconds > 0 else 0.0


@dataclass
class ExtractSummary:
    """What a run did and where the feature set stands after it (counts of the canonical view;
    every view's in ``views``)."""

    feature_set: str
    store: str
    videos: int  # in the feature set
    done: int  # extracted without error, this run or before
    failed: int
    pending: int
    extracted_now: int  # videos this run processed (successes and failures)
    failures: list[VideoFailure]
    unmatched: list[str]  # split lines that named no file
    unlisted: int  # videos in the folder that the split does not list (not extracted)
    unnamable: list[str]  # files skipped because their names are not UTF-8 (escaped)
    split_format: str | None  # the split list format detected, if a split was given
    seconds: float  # the whole run: listing, backbone loading, extraction, every view
    work_seconds: float  # decoding, inference and writing of the canonical view only
    write_seconds: float  # writing shards (in the background writer's thread), every view
    write_wait_seconds: float  # the work loop waited for writes (a full queue, the last shards)
    views: list[ViewSummary] = dataclasses.field(default_factory=list)  # canonical first
    pipeline: dict[str, Any] = dataclasses.field(default_factory=dict)  # PipelinePlan.to_json
    decode_bound: float = 0.0  # videos/s the decoders alone would deliver (every view)
    backbone_bound: float = 0.0  # videos/s the backbone alone would deliver (every view)

    @property
    def videos_per_second(self) -> float:
        """The canonical view's videos this run over its seconds from its first decode to its
        last write: start-up (listing, loading the backbone) excluded, as in the progress bar."""
        return self.extracted_now / self.work_seconds if self.work_seconds > 0 else 0.0

    @property
    def over_bound(self) -> float:
        """The canonical view's rate over the slower of its two bounds (0 when not measured)."""
        bound = min(self.decode_bound, self.backbone_bound)
        return self.videos_per_second / bound if bound > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def open_feature_set_for_writing(
    config: ExtractConfig,
    frozen: FrozenBackbone,
    video_list: VideoList,
    *,
    claims: ClaimBook,
    plan: PipelinePlan,
) -> list[FeatureSetWriter]:
    """Create the feature set, or open it and append new videos; refuse a different config.
    Then create the views asked for that it does not hold yet. Returns the writers of the
    canonical view and of each view asked for, in that order.

    Called once, before any work: under torchrun only rank 0 calls it. Holds the feature set's
    setup claim meanwhile, so two runs never create or grow it at the same time.
    """
    loaded = frozen.loaded
    root = open_root(config.out, mode="a")
    split = video_list.split
    recorded = {} if split is None else {SPLIT_RECORD: SplitRecord.of(split).to_json()}
    with claims.hold(SETUP, wait_s=SETUP_WAIT_S):
        writer = FeatureSetWriter.create_or_open(
            root,
            claims.scope,
            identity=feature_set_identity(
                loaded,
                frames=config.frames,
                compute_dtype=frozen.compute_dtype,
                decoder=plan.decoder,
                decoder_version=plan.decoder_version,
            ),
            provenance={**provenance(config, frozen), "pipeline": plan.to_json(), **recorded},
            videos=video_list.records,
            frames=config.frames,
            patches=loaded.grid[0] * loaded.grid[1],
            dim=loaded.dim,
            grid=loaded.grid,
            shard_size=config.shard_size,
        )
        # the split of the latest extraction: a store made before the record gets one, and a
        # corrected list (one that was missing, say) replaces the one recorded
        if recorded and writer.group.attrs["sact"].get(SPLIT_RECORD) != recorded[SPLIT_RECORD]:
            writer.set_attr(SPLIT_RECORD, recorded[SPLIT_RECORD])
        views = [
            writer.add_view(view.name, spec=view.to_json(), provenance=view_provenance(config))
            for view in config.view_specs()
        ]
    return [writer, *views]


def open_for_this_rank(
    config: ExtractConfig,
    frozen: FrozenBackbone,
    video_list: VideoList,
    job: Job,
    *,
    plan: PipelinePlan,
    run_started: float | None = None,
) -> tuple[list[FeatureSetWriter], ClaimBook]:
    """Rank 0 creates or opens the feature set and its views while the other ranks wait; then
    all open them. Returns the writers of the canonical view and of each view asked for.
    ``run_started``: when the run started, as its claims say (now if None)."""
    name = check_feature_set_name(
        config.name or default_name(config, frozen.loaded, compute_dtype=frozen.compute_dtype)
    )
    claims = ClaimBook(open_root(config.out, mode="a"), name, run=RunInfo.this_process(run_started))
    failure: SactError | None = None
    rank = job.rank
    if rank.is_main:
        try:
            writers = open_feature_set_for_writing(
                config, frozen, video_list, claims=claims, plan=plan
            )
        except SactError as error:
            failure = error
    # No rank goes on before rank 0 is done, and all learn whether it failed.
    if job.setup_failed(failure is not None):
        raise failure or SactError(f"rank 0 could not open the feature set in {config.out}")
    if not rank.is_main:
        group = open_root(config.out, mode="a")[name]
        writers = [
            FeatureSetWriter(group, view=view)
            for view in (CANONICAL, *(spec.name for spec in config.view_specs()))
        ]
    return writers, claims


def shards_for_this_process(writer: FeatureSetWriter, rank: Rank) -> list[int]:
    """The shards of the writer's view this process extracts: its share of the shards still to
    do, in order (all of them for a single process). Each is claimed only when its turn comes
    (``ClaimedOrder``)."""
    return owned_shards(writer.shards_to_do(), rank)


@dataclass(frozen=True)
class ViewCost:
    """What extracting one view costs this run, estimated before it starts."""

    view: str
    videos_now: int  # videos in the shards this process will extract
    bytes_now: int  # what they add to the store, estimated
    bytes_total: int  # the whole view once complete, estimated
    estimated_from: str  # how bytes per video were estimated


def estimate_costs(writers: list[FeatureSetWriter], work: list[list[int]]) -> list[ViewCost]:
    """Per view: videos to extract now and estimated bytes. Every view costs about the same per
    video (one decode, one backbone pass), so time grows linearly with views too. Bytes per
    video: the stored bytes per done video of the views written so far (their compression on
    these very features), else the uncompressed size (an upper bound)."""
    canonical = writers[0]
    raw = int(np.prod(canonical.features.shape[1:])) * 2  # float16 (T, P, D)
    stored, done = 0, 0
    for writer in writers:
        count = int(np.sum(writer.target["done"][:]))
        if count:
            stored += int(writer.features.nbytes_stored())
            done += count
    per_video = stored / done if done else raw
    how = f"{done} stored videos" if done else "uncompressed (upper bound)"
    costs = []
    for writer, shards in zip(writers, work, strict=True):
        videos = sum(end - start for start, end in map(writer.shard_bounds, shards))
        costs.append(
            ViewCost(
                view=writer.view,
                videos_now=videos,
                bytes_now=round(videos * per_video),
                bytes_total=round(len(writer) * per_video),
                estimated_from=how,
            )
        )
    return costs


# ---- the work loop ----


class VideosPerSecond(ProgressColumn):
    """The view's videos so far over the seconds since its work started: the rate the summary
    reports (``ExtractSummary.videos_per_second``), start-up excluded in both. Not rich's moving
    average, which swings with the shards' bursts (a whole shard lands at once)."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not task.completed or not elapsed:  # not started yet, or finished with nothing to do
            return Text("" if task.finished else "-- videos/s")
        return Text(f"{task.completed / elapsed:.1f} videos/s", style="cyan")


def _progress(console: Console) -> Progress:
    failed = TextColumn("[red]{task.fields[failed]} failed")
    extras = (VideosPerSecond(), failed, TimeElapsedColumn(), TextColumn("ETA"))
    return progress_display(console, *extras, label="extract", transient=False)


@dataclass
class ShardInProgress:
    """One shard's results while its videos pass through the backbone."""

    shard: int
    result: ShardResult
    batches_in_flight: int = 0
    all_submitted: bool = False  # every video was decoded and its batch submitted

    @property
    def complete(self) -> bool:
        return self.all_submitted and self.batches_in_flight == 0


class BatchLoop:
    """Decoded videos into batches, batches through the backbone, finished shards to the writer.

    One batch runs on the device while the next is gathered and submitted; only then are the
    first one's tokens copied into its shard (``FrozenBackbone.submit`` keeps two in flight). A
    shard goes to ``ShardWriter`` once its last batch has landed, so a shard's last batch still
    overlaps the next shard's first.
    """

    def __init__(
        self,
        frozen: FrozenBackbone,
        shard_writer: ShardWriter,
        *,
        on_done: Callable[[int], None],
        times: StageTimes,
    ) -> None:
        self.frozen = frozen
        self.shard_writer = shard_writer
        self.on_done = on_done  # called with the number of videos whose tokens landed
        self.times = times
        self.in_flight: tuple[PendingTokens, ShardInProgress, list[int]] | None = None

    def submit(self, shard: ShardInProgress, waiting: list[tuple[int, torch.Tensor]]) -> None:
        """Start a batch of the shard's videos ((position in shard, crops) each)."""
        pending = self.frozen.submit([crops for _, crops in waiting])
        self.land()  # the batch before: its tokens copied back while this one was queued
        shard.batches_in_flight += 1
        self.in_flight = (pending, shard, [position for position, _ in waiting])

    def land(self) -> None:
        """Put the batch in flight, if any, into its shard; hand the shard over once complete."""
        if self.in_flight is None:
            return
        pending, shard, positions = self.in_flight
        self.in_flight = None
        features = shard.result.features
        tokens = pending.result().reshape(len(positions), *features.shape[1:])  # (B, T, P, D)
        features[positions] = tokens
        self.times.computed += len(positions)
        self.times.backbone_seconds += pending.seconds
        shard.batches_in_flight -= 1
        self.on_done(len(positions))
        self.hand_over_if_complete(shard)

    def hand_over_if_complete(self, shard: ShardInProgress) -> None:
        if shard.complete:
            self.shard_writer.submit(shard.shard, shard.result)


def extract_shards(
    writer: FeatureSetWriter,
    shards: list[int],
    *,
    frozen: FrozenBackbone,
    config: ExtractConfig,
    progress: Progress,
    claims: ClaimBook,
    plan: PipelinePlan,
    decoder: Decoder,
    times: StageTimes,
    view: ViewSpec | None = None,
) -> tuple[int, ShardWriter]:
    """Extract and write those of ``shards`` of the writer's view (``view``; the canonical one
    when None) this run claims, in order, decoded by ``decoder`` as ``plan`` sizes it; returns
    how many videos were processed, and the writer (its timings). ``times`` adds up each
    stage's busy time."""
    work = [(shard, writer.records(shard)) for shard in shards]
    dataset = ClipDataset(
        videos_dir=config.videos,
        records=[record for _, records in work for record in records],
        frames=config.frames,
        preprocessing=frozen.loaded.preprocessing,
        view=view,
        decoder=decoder,
    )
    # a view with nothing left to extract (a finished run resumed) draws no empty bar
    task = progress.add_task(writer.view, total=len(dataset), failed=0, visible=len(dataset) > 0)
    failed = processed = 0
    patches, dim = writer.features.shape[2:]

    def skip(count: int) -> None:
        progress.update(task, total=progress.tasks[task].total - count)  # type: ignore[operator, unused-ignore]

    order = ClaimedOrder(writer, shards, claims, on_skip=skip)
    stream = iter(decoded_videos(dataset, workers=plan.workers, order=order))
    records_of = dict(work)

    def say(line: str) -> None:
        progress.console.print(line, highlight=False)

    with ShardWriter(writer, claims, queued=config.write_queue, say=say) as shard_writer:
        batches = BatchLoop(
            frozen, shard_writer, on_done=lambda n: progress.advance(task, n), times=times
        )
        # The loader drew a shard's first position (claiming the shard) before yielding its video.
        while (first := next(stream, None)) is not None:
            shard = order.claimed.popleft()
            count = len(records_of[shard])
            processed += count
            current = ShardInProgress(
                shard,
                ShardResult(
                    features=np.zeros((count, config.frames, patches, dim), dtype=np.float16),
                    frame_index=np.full((count, config.frames), -1, dtype=np.int32),
                    num_frames=np.zeros(count, dtype=np.int32),
                    errors=[""] * count,
                    crop_origin=(
                        None if writer.view == CANONICAL else np.full((count, 2), -1, np.int32)
                    ),
                ),
            )
            waiting: list[tuple[int, torch.Tensor]] = []  # (position in shard, crops)
            for position, video in enumerate(chain([first], islice(stream, count - 1))):
                times.decoded += 1
                times.decode_seconds += video.seconds
                if video.error:
                    current.result.errors[position] = video.error
                    failed += 1
                    progress.update(task, advance=1, failed=failed)
                    continue
                current.result.frame_index[position] = video.frame_index
                current.result.num_frames[position] = video.num_frames
                if current.result.crop_origin is not None:
                    current.result.crop_origin[position] = video.crop_origin
                waiting.append((position, video.crops))
                if len(waiting) == plan.batch_size:
                    batches.submit(current, waiting)
                    waiting = []
            if waiting:
                batches.submit(current, waiting)
            current.all_submitted = True
            batches.hand_over_if_complete(current)  # a shard whose videos all failed
        batches.land()
    for holder in sorted(set(order.held_elsewhere.values()), key=lambda run: run.started):
        held = sum(holder == other for other in order.held_elsewhere.values())
        progress.console.print(
            f"{held} shard(s) skipped: being extracted by {holder.describe()}; "
            "run again once it has finished to pick up anything it left",
            highlight=False,
        )
    return processed, shard_writer


def summarize(
    writer: FeatureSetWriter,
    *,
    store: str,
    unmatched: list[str],
    unlisted: int,
    unnamable: list[str],
    split_format: str | None,
    seconds: float,
    work_seconds: float,
    spent: dict[str, tuple[int, float]],
    shard_writers: list[ShardWriter],
    plan: PipelinePlan,
    times: StageTimes,
) -> ExtractSummary:
    """The run's summary; ``spent`` holds each view's (videos processed, seconds) this run, the
    canonical view first."""
    feature_set = ZarrFeatureSet(writer.group, location=store)
    counts = feature_set.counts()
    views = []
    for view, (processed, view_seconds) in spent.items():
        view_counts = feature_set.counts(view)
        views.append(
            ViewSummary(
                view=view,
                done=view_counts["done"],
                failed=view_counts["failed"],
                pending=view_counts["pending"],
                extracted_now=processed,
                seconds=round(view_seconds, 3),
            )
        )
    return ExtractSummary(
        feature_set=feature_set.name,
        store=store,
        videos=counts["videos"],
        done=counts["done"],
        failed=counts["failed"],
        pending=counts["pending"],
        extracted_now=spent[CANONICAL][0],
        failures=feature_set.failures(),
        unmatched=unmatched,
        unlisted=unlisted,
        unnamable=unnamable,
        split_format=split_format,
        seconds=round(seconds, 3),
        work_seconds=round(work_seconds, 3),
        write_seconds=round(sum(shards.write_seconds for shards in shard_writers), 3),
        write_wait_seconds=round(sum(shards.waited_seconds for shards in shard_writers), 3),
        views=views,
        pipeline=plan.to_json(),
        decode_bound=round(times.decode_rate(plan.workers), 3),
        backbone_bound=round(times.backbone_rate(), 3),
    )


def run_extraction(
    config: ExtractConfig | Checked[ExtractConfig],
    *,
    console: Console | None = None,
    on_plan: Callable[[list[ViewCost]], None] | None = None,
    run_started: float | None = None,
) -> ExtractSummary:
    """Extract every video of ``config`` not yet done into its feature set; see the module doc.

    ``on_plan`` is told, before any work, what each view will cost (rank 0 only; `sact extract`
    prints it). ``run_started`` is when the run started (default: now; `sact extract` gives its
    process's start): a run retries the failures recorded before it started, not those of runs
    alongside it (``ClaimedOrder``). Under torchrun this process extracts its rank's share, then
    waits for the other ranks. A config the command line checked runs as it is.
    """
    config = checked(config).config
    rank = rank_from_env()
    device = device_for(rank, resolve_device(config.device))
    try:
        with joined(rank, device=device) as job:
            return _extract_as_rank(
                config,
                job,
                device=device,
                console=console,
                on_plan=on_plan,
                run_started=run_started,
            )
    except Exception as error:
        if not is_storage_error(error):
            raise
        # A full disk, a bucket that stopped answering: what is written stays as it was (a shard
        # is done only once all of it is written), so the same command picks up from there.
        raise ExtractionStopped(
            f"extraction into {config.out} stopped: {storage_error_reason(error)}; the shards "
            "written before are intact: run the same command again to resume"
        ) from error


def _extract_as_rank(
    config: ExtractConfig,
    job: Job,
    *,
    device: torch.device,
    console: Console | None = None,
    on_plan: Callable[[list[ViewCost]], None] | None = None,
    run_started: float | None = None,
) -> ExtractSummary:
    rank = job.rank
    console = console or Console(stderr=True)
    if not rank.is_main:
        console = Console(stderr=True, quiet=True)  # one progress bar per job, not per rank
    started = time.perf_counter()
    for warning in config.warnings():
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    video_list = list_videos(config.videos, config.split)
    if video_list.split is not None:
        unmatched = len(video_list.unmatched)
        console.print(
            f"split {config.split} ({video_list.split.format.name} format): read "
            f"{video_list.split.read_description()}; {len(video_list.records)} videos found, "
            f"{counted(unmatched, 'line')} {agreeing(unmatched, 'names', 'name')} no file",
            highlight=False,
            soft_wrap=True,
        )
    loaded = load_backbone(
        config.backbone,
        weights_file=config.weights,
        random_init=config.random_init,
        size=config.size,
        grid=config.grid,
        seed=config.seed,
    )
    decoder = resolve_decoder(config.decoder, device)
    plan = plan_pipeline(
        decoder=decoder.name,
        decoder_version=decoder.version,
        decoder_on_gpu=decoder.on_gpu,
        device=device,
        frames=config.frames,
        workers=config.workers,
        batch_size=config.batch_size,
    )
    crop = loaded.preprocessing.size
    check_shared_memory(
        workers=0 if plan.on_gpu else plan.workers,
        clip_bytes=config.frames * 3 * crop * crop,  # uint8
        batch_videos=plan.batch_size,
        processes=rank.local_world_size,
    )
    frozen = FrozenBackbone(loaded, device=device)
    writers, claims = open_for_this_rank(
        config, frozen, video_list, job, plan=plan, run_started=run_started
    )
    console.print(plan.describe(), highlight=False, soft_wrap=True)
    specs = {view.name: view for view in config.view_specs()}
    work = [shards_for_this_process(writer, rank) for writer in writers]
    job.barrier("planned")  # every rank reads what is still to do before any shard is written
    if on_plan is not None and rank.is_main:
        on_plan(estimate_costs(writers, work))
    work_started = time.perf_counter()
    spent: dict[str, tuple[int, float]] = {}  # view: (videos processed, seconds)
    shard_writers = []
    times = StageTimes()
    with claims.keep_alive(), _progress(console) as progress:
        for writer, shards in zip(writers, work, strict=True):
            view_started = time.perf_counter()
            processed, shard_writer = extract_shards(
                writer,
                shards,
                frozen=frozen,
                config=config,
                progress=progress,
                claims=claims,
                plan=plan,
                decoder=decoder,
                times=times,
                view=specs.get(writer.view),
            )
            spent[writer.view] = (processed, time.perf_counter() - view_started)
            shard_writers.append(shard_writer)
    job.wait_for_all()  # the summary then counts every rank's shards
    finished = time.perf_counter()
    return summarize(
        writers[0],
        store=config.out,
        unmatched=video_list.unmatched,
        unlisted=video_list.unlisted,
        unnamable=video_list.unnamable,
        split_format=video_list.split_format,
        seconds=finished - started,
        work_seconds=spent[CANONICAL][1] if specs else finished - work_started,
        spent=spent,
        shard_writers=shard_writers,
        plan=plan,
        times=times,
    )
