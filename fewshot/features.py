"""Cached features of a split, from memory when they fit, streamed with prefetch when they don't.

An episode is ~50 videos (80 MB at ResNet-50 7x7x2048 float16): reading it from disk costs more
than the model step, so `SplitFeatures` loads a split's videos once into a tensor (on the GPU when
training there and it fits) when they fit the `cache_gb` budget, and otherwise reads each batch
from the store. `Prefetcher` runs the reads in a thread pool ahead of the consumer, so the model
step does not wait for data; bench/train.py measures both paths.

When the store holds more frames than the model uses, each video is cut into as many equal
segments as the model has frames: training takes one random frame per segment, evaluation the
segment centers (TSN sampling).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sact.extract.errors import SactError
from sact.extract.sampling import segment_centers
from sact.extract.store import FeatureSet
from sact.fewshot.episodes import VideoPool

BYTES_PER_GB = 1024**3
# Share of the free memory the split cache may take by default: leaves room for the model, the
# optimiser and the rest of the machine.
DEFAULT_MEMORY_SHARE = 0.5
LOAD_CHUNK_VIDEOS = 64

Item = TypeVar("Item")
Result = TypeVar("Result")


class FeatureError(SactError):
    """Features that cannot be served as asked; the message is one line for the user."""


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, or the free physical pages where that file is missing."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_cache_gb() -> float:
    return DEFAULT_MEMORY_SHARE * available_memory_bytes() / BYTES_PER_GB


def segment_frames(
    stored: int, used: int, count: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Which stored frames each of `count` videos uses: (count, used) int64.

    The stored frames are cut into `used` equal segments; with `rng` one random frame per segment
    (training), without it each segment's center, the rule stage 1 samples source frames by
    (extract/sampling.py).
    """
    if used > stored:
        raise FeatureError(f"the model uses {used} frames but the store holds only {stored}")
    if used < 1:
        raise FeatureError(f"the model must use at least one frame, got {used}")
    if rng is None or stored == used:
        return np.broadcast_to(segment_centers(stored, used), (count, used)).copy()
    starts = (np.arange(used) * stored) // used  # (used,)
    lengths = (np.arange(1, used + 1) * stored) // used - starts  # (used,)
    return starts + rng.integers(0, lengths, size=(count, used))  # (count, used)


def progress_bar(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=console is None,
    )


class Prefetcher:
    """Apply `fn` to items in a thread pool, `depth` items ahead, yielding results in order.

    Items are drawn from the iterable in the consumer's thread, so an iterable that draws random
    numbers stays deterministic; only `fn` (reading features) runs in the workers.
    """

    def __init__(self, *, workers: int, depth: int) -> None:
        if workers < 1 or depth < 1:
            raise FeatureError(f"need workers >= 1 and depth >= 1, got {workers}, {depth}")
        self.workers, self.depth = workers, depth

    def map(self, fn: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        iterator = iter(items)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="prefetch") as pool:
            pending: deque[Future[Result]] = deque()
            try:
                for item in iterator:
                    pending.append(pool.submit(fn, item))
                    if len(pending) >= self.depth:
                        break
                while pending:
                    result = pending.popleft().result()
                    for item in iterator:
                        pending.append(pool.submit(fn, item))
                        break
                    yield result
            finally:
                for future in pending:
                    future.cancel()


class SplitFeatures:
    """The features of a pool's videos, served as float16 tensors (n, T, P, D) on `device`.

    In memory when the split fits `cache_gb` (on `device` when that is a GPU with room for it,
    else on the host); otherwise every call reads from the store. Reads are safe from several
    threads.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        pool: VideoPool,
        *,
        frames: int,
        device: torch.device,
        cache_gb: float | None = None,
        console: Console | None = None,
    ) -> None:
        segment_frames(feature_set.frames, frames, 0)  # checks frames <= stored frames
        self.feature_set, self.pool, self.frames, self.device = feature_set, pool, frames, device
        shape = (len(pool), feature_set.frames, feature_set.patches, feature_set.dim)
        self.nbytes = int(np.prod(shape)) * 2  # float16
        budget = (default_cache_gb() if cache_gb is None else cache_gb) * BYTES_PER_GB
        self.cache: torch.Tensor | None = None
        if self.nbytes <= budget:
            self.cache = self._load(shape, self._cache_device(), console)

    @property
    def in_memory(self) -> bool:
        return self.cache is not None

    def where(self) -> str:
        size = f"{self.nbytes / BYTES_PER_GB:.2f} GB"
        if self.cache is None:
            return f"streamed from the store ({size} does not fit the cache budget)"
        return f"in memory on {self.cache.device} ({size})"

    def _cache_device(self) -> torch.device:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.nbytes <= DEFAULT_MEMORY_SHARE * free:
                return self.device
        return torch.device("cpu")

    def _load(
        self, shape: tuple[int, ...], device: torch.device, console: Console | None
    ) -> torch.Tensor:
        cache = torch.empty(shape, dtype=torch.float16, device=device)  # (V, T_stored, P, D)
        # chunks follow store order, so each chunk is a few contiguous slice reads
        by_store_order = np.argsort(self.pool.store_indices, kind="stable")
        chunks = [
            by_store_order[start : start + LOAD_CHUNK_VIDEOS]
            for start in range(0, len(by_store_order), LOAD_CHUNK_VIDEOS)
        ]

        def read(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return positions, self.feature_set.read(self.pool.store_indices[positions])

        with progress_bar(console) as progress:
            task = progress.add_task(f"loading {self.pool.part} features", total=len(self.pool))
            for positions, block in Prefetcher(workers=4, depth=8).map(read, chunks):
                cache[torch.from_numpy(positions).to(device)] = torch.from_numpy(block).to(device)
                progress.advance(task, len(positions))
        return cache

    def videos(self, positions: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        """Videos at pool `positions`, stored frames `frames` (n, T): (n, T, P, D) float16."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.cache is not None:
            rows = torch.from_numpy(positions).to(self.cache.device)[:, None]  # (n, 1)
            columns = torch.from_numpy(frames).to(self.cache.device)  # (n, T)
            return self.cache[rows, columns].to(self.device, non_blocking=True)  # (n, T, P, D)
        block = self.feature_set.read(self.pool.store_indices[positions])  # (n, T_stored, P, D)
        picked = np.take_along_axis(block, frames[:, :, None, None], axis=1)  # (n, T, P, D)
        return torch.from_numpy(picked).to(self.device)
