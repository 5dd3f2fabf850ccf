"""Cached features of a split in three tiers: the device, host memory, the store.

An episode is ~50 videos (80 MB at ResNet-50 7x7x2048 float16), and a GPU runs an SA-CT step on
it in milliseconds, so the step must not wait for reads. `SplitFeatures` holds what fits on the
training device, then what fits in host memory (copied to the GPU through pinned staging buffers),
and reads the rest from the store on every call; `plan_cache` decides how many videos go where
from the split's size and the machine's free memory (fewshot/memory.py), and `sact train` prints
that plan. `Prefetcher` runs the loads in threads ahead of the model step; bench/train.py and
bench/gpu.py measure each tier against its bound.

The host tier is ordinary memory, not pinned: pinning tens of GB takes long, cannot be swapped,
and torch's caching host allocator rounds each pinned block up to a power of two; each batch is
gathered into a small pinned buffer instead, which is also where frames are picked.

With augmented views (docs/STORE.md) training reads each video in one of several stored views, so
what the tiers hold is a video view, one (view, video) pair: the plan counts and sizes video
views, and a split with K views needs K times the memory of its canonical view alone.

When the store holds more frames than the model uses, each video is cut into as many equal
segments as the model has frames: training takes one random frame per segment, evaluation the
segment centers (TSN sampling).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console

from sact.common.errors import SactError
from sact.common.progress import progress_display
from sact.fewshot.episodes import VideoPool
from sact.fewshot.memory import available_host_bytes, free_device_bytes
from sact.store.backends import FeatureSet
from sact.store.feature_set import CANONICAL
from sact.store.sampling import segment_centers

BYTES_PER_GB = 1024**3
# Shares of the free memory the feature cache may take by default. The GPU keeps a quarter for the
# model step, the val embeddings and the batches in flight; the host keeps half for everything
# else on the machine (the val cache, the readers' buffers, other processes).
DEVICE_MEMORY_SHARE = 0.75
HOST_MEMORY_SHARE = 0.5
LOAD_CHUNK_VIDEOS = 64


Item = TypeVar("Item")
Result = TypeVar("Result")


class FeatureError(SactError):
    """Features that cannot be served as asked; the message is one line for the user."""


def segment_frames(
    stored: int, used: int, count: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Which stored frames each of `count` videos uses: (count, used) int64.

    The stored frames are cut into `used` equal segments; with `rng` one random frame per segment
    (training), without it each segment's center, the rule stage 1 samples source frames by
    (store/sampling.py).
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


@dataclass(frozen=True)
class CachePlan:
    """Where each video view of a split is served from: the tiers of the feature cache.

    A video view is one stored view of one video (docs/STORE.md); a split read in its canonical
    view alone has one per video. In their order (`SplitFeatures`), the first `on_device` video
    views sit on the training device, the next `on_host` in host memory (copied to the GPU through
    pinned staging buffers), and the rest are read from the store by `readers` threads ahead of
    the model step. On a CPU the device is the host: there is no separate host tier.
    """

    part: str
    videos: int
    video_bytes: int
    device: str
    on_device: int
    on_host: int
    readers: int
    limits: str  # what bounded the tiers, for the printed plan
    views: int = 1  # stored views read of each video

    @property
    def video_views(self) -> int:
        return self.videos * self.views

    @property
    def from_store(self) -> int:
        return self.video_views - self.on_device - self.on_host

    @property
    def cached_bytes(self) -> int:
        return (self.on_device + self.on_host) * self.video_bytes

    def describe(self) -> str:
        def size(count: int) -> str:
            return f"{count * self.video_bytes / BYTES_PER_GB:.2f} GB"

        tiers = [f"{self.on_device} on {self.device} ({size(self.on_device)})"]
        if self.on_host or self.device != "cpu":
            tiers.append(f"{self.on_host} in host memory ({size(self.on_host)})")
        tiers.append(
            f"{self.from_store} read from the store by {self.readers} threads "
            f"({size(self.from_store)})"
        )
        counted = f"{self.videos} videos"
        if self.views > 1:
            counted += f" x {self.views} views = {self.video_views} video views"
        return (
            f"{self.part} features, {counted} ({size(self.video_views)}): "
            + ", ".join(tiers)
            + f"; limits: {self.limits}"
        )


def plan_cache(
    *,
    part: str,
    videos: int,
    video_bytes: int,
    device: torch.device,
    readers: int,
    cache_gb: float | None = None,
    device_tier: bool = True,
    views: int = 1,
) -> CachePlan:
    """Split the `videos` x `views` video views between the tiers: the device first, then host
    memory, then the store.

    `cache_gb` caps both memory tiers together (None: no cap beyond the memory shares). The GPU's
    share is of its free memory now; the host's of its available memory as its cgroup allows
    (fewshot/memory.py). `device_tier=False` keeps the split off the GPU (a split read once per
    validation).
    """
    limits = []
    budget = math.inf
    if cache_gb is not None:
        budget = max(0.0, cache_gb) * BYTES_PER_GB
        limits.append(f"--cache-gb {cache_gb:g}")
    available = available_host_bytes()
    host_room = HOST_MEMORY_SHARE * available
    limits.append(f"host {HOST_MEMORY_SHARE:.0%} of {available / BYTES_PER_GB:.1f} GB available")
    if device.type != "cuda":  # the device is the host: one memory tier
        device_room, host_room = host_room, 0.0
    elif device_tier:
        free = free_device_bytes(device)
        device_room = DEVICE_MEMORY_SHARE * free
        limits.append(f"{device} {DEVICE_MEMORY_SHARE:.0%} of {free / BYTES_PER_GB:.1f} GB free")
    else:
        device_room = 0.0
    video_views = videos * views
    on_device = min(video_views, int(min(budget, device_room) // video_bytes))
    budget -= on_device * video_bytes
    on_host = min(video_views - on_device, int(min(budget, host_room) // video_bytes))
    return CachePlan(
        part=part,
        videos=videos,
        video_bytes=video_bytes,
        device=str(device),
        on_device=on_device,
        on_host=on_host,
        readers=readers,
        limits="; ".join(limits),
        views=views,
    )


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on a GPU through pinned memory, without blocking the host."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def take_rows(rows: torch.Tensor, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """rows[index] of a CPU tensor, with numpy: a memcpy per row, where torch's index_select on
    float16 goes value by value on a CPU (the device tier's loader 13x faster, bench/RESULTS.md),
    and without holding the GIL, so reader threads overlap. Bounds are checked here, so numpy
    writes into `out` directly instead of through a buffer."""
    if index.size and (index.min() < 0 or index.max() >= len(rows)):
        raise IndexError(f"row index out of range 0..{len(rows) - 1}")
    return np.take(rows.numpy(), index, axis=0, out=out, mode="clip")


class SplitFeatures:
    """The features of a pool's videos, served as float16 tensors (n, T, P, D) on `device`.

    With several stored `views` (docs/STORE.md) the unit the tiers hold is a video view, one
    (view, video) pair, ranked view-major: rank = view · len(pool) + the video's place in store
    order, so the canonical view fills the tiers first and loading reads each view's array front
    to back. Each video view is held in the tier its `CachePlan` gives it (`plan_cache` from the
    machine's memory unless a plan is passed): on the device, in host memory, or read from the
    store on every call. `videos` may be called from several threads at once (the training
    loader's readers). On a GPU its gathers and copies run on a side stream, so they overlap the
    model step; the calling thread waits for them, never the step.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        pool: VideoPool,
        *,
        frames: int,
        device: torch.device,
        cache_gb: float | None = None,
        readers: int = 4,
        device_tier: bool = True,
        plan: CachePlan | None = None,
        console: Console | None = None,
        views: Sequence[str] = (CANONICAL,),
    ) -> None:
        segment_frames(feature_set.frames, frames, 0)  # checks frames <= stored frames
        self.feature_set, self.pool, self.frames, self.device = feature_set, pool, frames, device
        self.views = tuple(views)
        self.video_shape = (feature_set.frames, feature_set.patches, feature_set.dim)
        self.plan = plan or plan_cache(
            part=pool.part,
            videos=len(pool),
            views=len(self.views),
            video_bytes=int(np.prod(self.video_shape)) * 2,  # float16
            device=device,
            readers=readers,
            cache_gb=cache_gb,
            device_tier=device_tier,
        )
        # tiers follow store order, so loading them reads the store front to back
        self.store_order = np.argsort(pool.store_indices, kind="stable")
        self.rank = np.empty(len(pool), dtype=np.int64)  # pool position -> place in store order
        self.rank[self.store_order] = np.arange(len(pool))
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if console is not None:
            console.print(self.plan.describe())
        self.on_device = torch.empty(
            (self.plan.on_device, *self.video_shape), dtype=torch.float16, device=device
        )
        self.on_host = torch.empty((self.plan.on_host, *self.video_shape), dtype=torch.float16)
        self._load(console)

    @property
    def in_memory(self) -> bool:
        """Every video view on the device: nothing to read ahead."""
        return self.plan.on_device == self.plan.video_views

    def where(self) -> str:
        return self.plan.describe()

    def _load(self, console: Console | None) -> None:
        cached = self.plan.on_device + self.plan.on_host
        videos = len(self.pool)
        chunks = []  # ranks [start, stop) of video views, each within one view
        for start in range(0, cached, videos):
            view_stop = min(start + videos, cached)
            chunks += [
                (chunk, min(chunk + LOAD_CHUNK_VIDEOS, view_stop))
                for chunk in range(start, view_stop, LOAD_CHUNK_VIDEOS)
            ]

        def read(chunk: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray]:
            start, stop = chunk
            view, first = divmod(start, videos)
            indices = self.pool.store_indices[self.store_order[first : first + stop - start]]
            block = self.feature_set.read(indices, self.views[view])
            return chunk, block  # (stop - start, T_stored, P, D)

        with progress_display(console) as progress:
            bar = progress.add_task(f"loading {self.pool.part} features", total=cached)
            readers = Prefetcher(workers=self.plan.readers, depth=2 * self.plan.readers)
            for (start, stop), block in readers.map(read, chunks):
                # ranks [start, stop): the device tier's first, then the host's
                split = min(max(self.plan.on_device - start, 0), stop - start)
                if split:
                    self.on_device[start : start + split] = to_device(block[:split], self.device)
                if split < stop - start:
                    host_start = start + split - self.plan.on_device
                    host_stop = stop - self.plan.on_device
                    self.on_host[host_start:host_stop] = torch.from_numpy(block[split:])
                progress.advance(bar, stop - start)
        if self.copy_stream is not None:  # the loaders' stream reads what this one wrote
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))

    def videos(
        self, positions: np.ndarray, frames: np.ndarray, views: np.ndarray | None = None
    ) -> torch.Tensor:
        """Videos at pool `positions`, stored frames `frames` (n, T), each in view `views` (n,)
        (indices into `self.views`; None: the first): (n, T, P, D) float16.

        Each video view comes from the tier that holds it, bit for bit the same values from any
        tier.
        """
        positions = np.asarray(positions, dtype=np.int64)
        frames = np.asarray(frames, dtype=np.int64)
        views = np.zeros_like(positions) if views is None else np.asarray(views, dtype=np.int64)
        rank = views * len(self.pool) + self.rank[positions]  # (n,) video view ranks
        in_tier = {
            "device": rank < self.plan.on_device,
            "host": (rank >= self.plan.on_device)
            & (rank < self.plan.on_device + self.plan.on_host),
        }
        in_tier["store"] = ~(in_tier["device"] | in_tier["host"])
        # a batch from the device alone needs no side stream (and no wait for it)
        side_stream = self.copy_stream is not None and not in_tier["device"].all()
        with torch.cuda.stream(self.copy_stream) if side_stream else nullcontext():
            parts = []
            for tier, selected in in_tier.items():
                if not selected.any():
                    continue
                if tier == "device":
                    part = self._gather_device(rank[selected], frames[selected])
                elif tier == "host":
                    part = self._gather_host(rank[selected] - self.plan.on_device, frames[selected])
                else:
                    part = self._read_store(positions[selected], frames[selected], views[selected])
                parts.append((selected, part))
            videos = parts[0][1] if len(parts) == 1 else self._assemble(parts, frames.shape)
        if side_stream:
            self._hand_over(videos)
        return videos

    def _assemble(
        self, parts: list[tuple[np.ndarray, torch.Tensor]], shape: tuple[int, ...]
    ) -> torch.Tensor:
        """One batch from the tiers' parts, each video in its requested place."""
        videos = torch.empty(
            (*shape, *self.video_shape[1:]), dtype=torch.float16, device=self.device
        )  # (n, T, P, D)
        for selected, part in parts:
            videos[to_device(np.flatnonzero(selected), self.device)] = part
        return videos

    def _frame_rows(self, rows: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Rows of a tier seen as (video views * T_stored, P, D), one per (video view, frame):
        gathering them copies P*D contiguous values per row."""
        return (rows[:, None] * self.video_shape[0] + frames).ravel()  # (n*T,)

    def _gather_device(self, rows: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        flat = self._frame_rows(rows, frames)
        frame_rows = self.on_device.view(-1, *self.video_shape[1:])  # (V*T_stored, P, D)
        if self.device.type == "cpu":
            gathered = torch.from_numpy(take_rows(frame_rows, flat))  # (n*T, P, D)
        else:  # one non-blocking copy of the indices, the gather on the device
            gathered = torch.index_select(frame_rows, 0, to_device(flat, self.device))
        return gathered.view(*frames.shape, *self.video_shape[1:])  # (n, T, P, D)

    def _gather_host(self, rows: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        flat = self._frame_rows(rows, frames)
        host_rows = self.on_host.view(-1, *self.video_shape[1:])  # (V*T_stored, P, D)
        if self.device.type != "cuda":  # numpy's own result (it asks the kernel for huge
            # pages): taking into a fresh torch tensor of tens of MB was 8x slower here
            return torch.from_numpy(take_rows(host_rows, flat)).view(
                *frames.shape, *self.video_shape[1:]
            )  # (n, T, P, D)
        # gathered straight into pinned memory, so the copy to the GPU does not block
        staged = torch.empty(
            (len(flat), *self.video_shape[1:]), dtype=torch.float16, pin_memory=True
        )
        take_rows(host_rows, flat, out=staged.numpy())  # (n*T, P, D)
        staged = staged.view(*frames.shape, *self.video_shape[1:])  # (n, T, P, D)
        return staged.to(self.device, non_blocking=True)

    def _read_store(
        self, positions: np.ndarray, frames: np.ndarray, views: np.ndarray
    ) -> torch.Tensor:
        indices = self.pool.store_indices[positions]
        in_views = np.unique(views)
        if len(in_views) == 1:
            block = self.feature_set.read(indices, self.views[in_views[0]])  # (n, T_stored, P, D)
        else:
            block = np.empty((len(positions), *self.video_shape), dtype=np.float16)
            for view in in_views:
                in_view = views == view
                block[in_view] = self.feature_set.read(indices[in_view], self.views[view])
        if frames.shape[1] == self.video_shape[0] and (frames == np.arange(frames.shape[1])).all():
            return to_device(block, self.device)  # every stored frame in order: no copy to pick
        picked = np.take_along_axis(block, frames[:, :, None, None], axis=1)  # (n, T, P, D)
        return to_device(picked, self.device)

    def _hand_over(self, videos: torch.Tensor) -> None:
        """Make a batch built on the side stream safe on the consumer's (default) stream: this
        loader thread waits for its copies, and the allocator keeps the memory until the
        consumer's work on it is done."""
        assert self.copy_stream is not None
        done = torch.cuda.Event()
        done.record(self.copy_stream)
        done.synchronize()
        videos.record_stream(torch.cuda.default_stream(self.device))


# the features loaded within `features_shared`, by what they hold; None outside it
_SHARED: ContextVar[dict[tuple[Any, ...], SplitFeatures] | None] = ContextVar(
    "sact_shared_features", default=None
)


@contextmanager
def features_shared() -> Iterator[None]:
    """Within the block, `split_features` hands every caller asking for the same features the
    same loaded SplitFeatures: the runs of `sact sweep` on one device read a split once, not
    once per run. What was loaded is let go when the block ends."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def sharing_features() -> bool:
    """Whether this is within `features_shared`: a split loaded now serves later runs too."""
    return _SHARED.get() is not None


def split_features(
    feature_set: FeatureSet, pool: VideoPool, *, console: Console | None = None, **options: Any
) -> SplitFeatures:
    """`SplitFeatures(feature_set, pool, **options)`, or, within `features_shared`, the one
    already loaded with the same store, feature set, videos and options."""
    shared = _SHARED.get()
    if shared is None:
        return SplitFeatures(feature_set, pool, console=console, **options)
    key = (
        feature_set.location,
        feature_set.name,
        pool.part,
        tuple(pool.store_indices.tolist()),
        tuple(sorted((name, repr(value)) for name, value in options.items())),
    )
    if key not in shared:
        shared[key] = SplitFeatures(feature_set, pool, console=console, **options)
    elif console is not None:
        console.print(f"{pool.part} features: the {len(pool)} videos already loaded by this sweep")
    return shared[key]
