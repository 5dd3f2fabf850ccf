"""Decoded clips for the backbone: the work list's videos, decoded, sampled and cropped a few
videos ahead of the model, in the order shards are claimed.

    shards still to do ─▶ ClaimedOrder (claims each shard just before its first video is drawn)
                                │ work-list positions
                                ▼
    ClipDataset[i]: decode + sample T frames + resize/crop ─▶ DecodedVideo (or its failure reason)

A CPU decoder (extract/decoders.py) runs in DataLoader worker processes and hands crops over
through shared memory; a GPU decoder runs in threads of the main process (its sessions), each on
its own CUDA stream, and its crops stay on the GPU.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sact.common.claims import ClaimBook, RunInfo
from sact.common.errors import SactError
from sact.extract.backbone import Preprocessing
from sact.extract.decode import DecodeError
from sact.extract.decoders import Decoder, PyAVDecoder
from sact.extract.shard_writer import shard_topic
from sact.extract.videos import VideoDiscoveryError, resolve_video_path
from sact.extract.views import ViewSpec
from sact.store.feature_set import VideoRecord
from sact.store.sampling import segment_centers
from sact.store.zarr_store import FeatureSetWriter

PREFETCHED_PER_WORKER = 4  # clips each decoding worker (process or GPU session) keeps ready
SHARED_MEMORY = Path("/dev/shm")


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
        topic = shard_topic(shard, view=self.writer.view)
        if not self.writer.shard_needs_work(shard):  # finished by another run meanwhile
            return False
        if not self.claims.try_claim(topic):
            holder = self.claims.holder_of(topic)
            if holder is not None:
                self.held_elsewhere[shard] = holder
            return False
        # Failed videos are retried by the next run, not by one that ran alongside the run that
        # just recorded them (each video extracted once per run of the lab).
        retry = not self.claims.done_by_another_run_meanwhile(topic)
        if not self.writer.shard_needs_work(shard, retry_failed=retry):
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


@dataclass
class DecodedVideo:
    crops: torch.Tensor  # (T, 3, S, S) uint8 on the decoder's device; empty when it failed
    frame_index: np.ndarray  # (T,) int64; -1 when the video failed
    num_frames: int
    error: str  # "" when the video decoded
    crop_origin: tuple[int, int] = (-1, -1)  # (top, left) in the resized frames; views only
    seconds: float = 0.0  # decoding, sampling, resizing and cropping it took


class ClipDataset(Dataset[DecodedVideo]):
    """Video i of the work list, decoded by ``decoder`` (PyAV by default), sampled and cropped
    as ``view`` says (the canonical view by default); failures come back as reasons."""

    def __init__(
        self,
        *,
        videos_dir: Path,
        records: list[VideoRecord],
        frames: int,
        preprocessing: Preprocessing,
        view: ViewSpec | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.videos_dir = videos_dir
        self.records = records
        self.frames = frames
        self.preprocessing = preprocessing
        self.view = view if view is not None and not view.is_canonical else None
        self.decoder = decoder if decoder is not None else PyAVDecoder()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DecodedVideo:
        started = time.perf_counter()
        record = self.records[index]
        try:
            path = resolve_video_path(self.videos_dir, record.path)
            if self.view is None:
                clip = self.decoder.sample(path, self.frames, segment_centers)
                crops = self.preprocessing.resize_and_crop_images(clip.images)  # (T, 3, S, S)
                return DecodedVideo(
                    crops, clip.indices, clip.num_frames, "", seconds=time.perf_counter() - started
                )
            view, video_id, size = self.view, record.video_id, self.preprocessing.size
            clip = self.decoder.sample(
                path,
                self.frames,
                lambda count, frames: view.frame_indices(count, frames, video_id),
            )
            crops, origin = self.preprocessing.resize_and_crop_images_at(
                clip.images,
                lambda height, width: view.crop_origin(height, width, size, video_id),
                flip=view.flip,
            )  # (T, 3, S, S)
            seconds = time.perf_counter() - started
            return DecodedVideo(crops, clip.indices, clip.num_frames, "", origin, seconds)
        except (DecodeError, VideoDiscoveryError) as error:
            return DecodedVideo(
                crops=torch.empty(0, dtype=torch.uint8),
                frame_index=np.full(self.frames, -1, dtype=np.int64),
                num_frames=0,
                error=str(error) or type(error).__name__,
                seconds=time.perf_counter() - started,
            )


def _as_is(item: DecodedVideo) -> DecodedVideo:
    return item


def _single_thread_worker(_: int) -> None:
    # Each worker decodes one video at a time; torch threads would only fight each other.
    torch.set_num_threads(1)


def decoded_videos(
    dataset: ClipDataset, *, workers: int, order: Iterable[int] | None = None
) -> Iterator[DecodedVideo]:
    """The dataset's videos in ``order`` (default: all, in order), decoded a few videos ahead by
    ``workers`` processes, or with a GPU decoder by ``workers`` threads (its sessions; at least
    one). Not pinned here: the backbone copies each batch into its own pinned buffer
    (``FrozenBackbone.submit``)."""
    if dataset.decoder.on_gpu:
        yield from _decoded_in_threads(dataset, sessions=max(1, workers), order=order)
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        sampler=order,
        num_workers=workers,
        collate_fn=_as_is,  # type: ignore[arg-type, unused-ignore]  # batch_size=None: one item
        worker_init_fn=_single_thread_worker if workers > 0 else None,
        prefetch_factor=PREFETCHED_PER_WORKER if workers > 0 else None,
    )
    yield from loader


class _SessionStreams(threading.local):
    """Each decoding thread's own CUDA stream: its resizes never wait for the backbone's work on
    the main thread's stream, nor for another session's."""

    stream: torch.cuda.Stream | None = None


def _decoded_in_threads(
    dataset: ClipDataset, *, sessions: int, order: Iterable[int] | None
) -> Iterator[DecodedVideo]:
    """Videos decoded on the GPU by ``sessions`` threads, in ``order``. Positions are drawn from
    ``order`` in this thread, as the DataLoader's sampler is, so shards are claimed just ahead of
    the work; each clip's GPU work has finished before it is yielded."""
    streams = _SessionStreams()
    device = dataset.decoder.device

    def decode(position: int) -> DecodedVideo:
        if streams.stream is None:
            torch.cuda.set_device(device)  # a new thread starts on device 0
            streams.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(streams.stream):
            video = dataset[position]
        streams.stream.synchronize()  # the crops are complete before another stream reads them
        return video

    positions = iter(order if order is not None else range(len(dataset)))
    with ThreadPoolExecutor(max_workers=sessions, thread_name_prefix="gpu-decode") as pool:
        pending: deque[Future[DecodedVideo]] = deque(
            pool.submit(decode, position)
            for position in islice(positions, sessions * PREFETCHED_PER_WORKER)
        )
        while pending:
            video = pending.popleft().result()
            following = next(positions, None)
            if following is not None:
                pending.append(pool.submit(decode, following))
            yield video


def shared_memory_needed(
    *, workers: int, clip_bytes: int, batch_videos: int, processes: int
) -> int:
    """Bytes of shared memory the decoded clips of ``processes`` extraction runs on one machine
    may hold at once: each worker's prefetched clips, plus the batch being gathered (a clip stays
    in shared memory until the backbone has copied it)."""
    if workers == 0:
        return 0
    return processes * (workers * PREFETCHED_PER_WORKER + batch_videos) * clip_bytes


def check_shared_memory(
    *,
    workers: int,
    clip_bytes: int,
    batch_videos: int,
    processes: int,
    free_bytes: int | None = None,
) -> None:
    """Refuse to start decoding workers that would overflow ``/dev/shm`` (``free_bytes``: its
    free space, read when None). Workers pass clips through it, and Docker gives a container
    64 MB, where a few workers die of SIGBUS mid-run."""
    needed = shared_memory_needed(
        workers=workers, clip_bytes=clip_bytes, batch_videos=batch_videos, processes=processes
    )
    if needed == 0:
        return
    if free_bytes is None:
        try:
            stats = os.statvfs(SHARED_MEMORY)
        except OSError:  # no /dev/shm (not Linux): torch uses another mechanism
            return
        free_bytes = stats.f_bavail * stats.f_frsize
    if needed > free_bytes:
        suggested_gb = math.ceil(2 * needed / 2**30)
        raise SactError(
            f"{SHARED_MEMORY} has {free_bytes / 2**20:.0f} MB free but {processes} process(es) x "
            f"{workers} decoding workers need about {needed / 2**20:.0f} MB to pass clips: run the "
            f"container with --shm-size={suggested_gb}g, or use fewer --workers or a smaller "
            "--batch-size"
        )
