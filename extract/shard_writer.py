"""Finished shards into the store, behind the backbone: a writer thread with a short queue.

Writing one 64-video ResNet-50 shard (98 MiB of float16, compressed) takes seconds, many times what
a GPU needs to compute it; written in the main loop, it would leave the backbone idle. Here the
loop hands each finished shard over and goes on; one thread writes them in order, ``queued``
shards behind at most (then the loop waits: memory stays bounded).

Resume guarantees are the store's (docs/STORE.md): a shard's arrays are written, then its done
markers, and only then is its claim released. A run killed with shards still queued leaves them
not done and still claimed by a process that is gone, so the next run redoes them; nothing half
written is ever marked done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType

from sact.common.claims import ClaimBook
from sact.store.feature_set import CANONICAL
from sact.store.zarr_store import FeatureSetWriter, ShardResult


def shard_topic(shard: int, *, view: str = CANONICAL) -> str:
    """The claim on one shard of one view: views are extracted and shared between runs apart."""
    topic = f"shard-{shard:06d}"
    return topic if view == CANONICAL else f"{view}-{topic}"


_DONE = None  # tells the thread that no shard follows


class ShardWriter:
    """Writes the shards handed to ``submit``, in order, from a thread of its own.

    Use it as a context manager: leaving the block writes the shards still queued (they are
    complete) and re-raises a write that failed. ``queued`` 0 writes each shard in ``submit``
    itself, in the caller's thread. ``say`` prints a line for the user.
    """

    def __init__(
        self,
        writer: FeatureSetWriter,
        claims: ClaimBook,
        *,
        queued: int,
        say: Callable[[str], None] = print,
    ) -> None:
        if queued < 0:
            raise ValueError(f"queued must be at least 0, got {queued}")
        self.writer = writer
        self.claims = claims
        self.say = say
        self.queued = queued
        self.written: list[int] = []  # shards written, in order
        self.write_seconds = 0.0  # spent writing, in whichever thread
        self.waited_seconds = 0.0  # the caller spent in submit and close: writing, or waiting
        self.failure: BaseException | None = None
        self._queue: queue.Queue[tuple[int, ShardResult] | None] = queue.Queue(maxsize=queued)
        self._thread = threading.Thread(target=self._drain, name="sact-shard-writer", daemon=True)
        if queued > 0:
            self._thread.start()

    def write(self, shard: int, result: ShardResult) -> None:
        """Write ``shard`` if this run still holds its claim, then release the claim."""
        topic = shard_topic(shard, view=self.writer.view)
        started = time.perf_counter()
        try:
            if self.claims.still_holds(topic):
                self.writer.write_shard(shard, result)
                self.written.append(shard)
                self.write_seconds += time.perf_counter() - started
            else:  # taken over as stale (this run stalled): the other run writes it
                self.say(f"shard {shard} was taken over by another run; not written")
        except BaseException:
            with suppress(Exception):  # the write's error is the one to report
                self.claims.release(topic)
            raise
        self.claims.release(topic)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            shard, result = item
            if self.failure is not None:  # a write failed: give the rest back, unwritten
                # Best effort: the store may be what failed (a full disk), and a claim left held
                # frees itself once this run is gone (extract/claims.py).
                with suppress(Exception):
                    self.claims.release(shard_topic(shard, view=self.writer.view))
                continue
            try:
                self.write(shard, result)
            except BaseException as error:  # re-raised in the caller's thread
                self.failure = error

    def submit(self, shard: int, result: ShardResult) -> None:
        """Hand a finished shard over; waits while ``queued`` shards are waiting already."""
        if self.failure is not None:
            raise self.failure
        started = time.perf_counter()
        if self.queued == 0:
            self.write(shard, result)
        else:
            self._queue.put((shard, result))
        self.waited_seconds += time.perf_counter() - started

    def close(self) -> None:
        """Write what is queued, stop the thread; re-raise a write that failed."""
        if self._thread.is_alive():
            started = time.perf_counter()
            self._queue.put(_DONE)
            self._thread.join()
            self.waited_seconds += time.perf_counter() - started
        if self.failure is not None:
            raise self.failure

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
            return
        with suppress(Exception):  # the block failed: its error is the one to report
            self.close()
