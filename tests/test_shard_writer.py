"""The background shard writer: order, a bounded queue, claims released only after the write,
failures surfaced in the caller's thread. The store and the claims are stand-ins that record what
happens; the real ones are exercised by the extraction tests (test_extract.py: kill and resume)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sact.extract.shard_writer import ShardWriter, shard_topic
from sact.store.feature_set import CANONICAL
from sact.store.zarr_store import ShardResult

WAIT_S = 10.0


class Claims:
    """Records releases; ``taken_over`` shards were claimed by another run meanwhile."""

    def __init__(self, events: list[tuple[str, int]], *, taken_over: tuple[int, ...] = ()) -> None:
        self.events = events
        self.taken_over = {shard_topic(shard) for shard in taken_over}

    def still_holds(self, topic: str) -> bool:
        return topic not in self.taken_over

    def release(self, topic: str) -> None:
        self.events.append(("release", int(topic.removeprefix("shard-"))))


class Store:
    """Writes wait for ``gate`` (a slow disk); ``broken`` shards fail to write."""

    view = CANONICAL  # the view its shards belong to, as FeatureSetWriter.view

    def __init__(
        self, events: list[tuple[str, int]], *, gate: threading.Event, broken: tuple[int, ...] = ()
    ) -> None:
        self.events, self.gate, self.broken = events, gate, broken
        self.started = threading.Semaphore(0)

    def write_shard(self, shard: int, result: ShardResult) -> None:
        self.started.release()
        assert self.gate.wait(WAIT_S)
        if shard in self.broken:
            raise OSError(f"disk full writing shard {shard}")
        self.events.append(("write", shard))


def result() -> ShardResult:
    return ShardResult(np.zeros((1, 1, 1, 1), np.float16), np.zeros((1, 1), np.int32),
                       np.zeros(1, np.int32), [""])  # fmt: skip


def writer(events, *, queued: int = 2, taken_over=(), broken=()):  # type: ignore[no-untyped-def]
    gate = threading.Event()
    store = Store(events, gate=gate, broken=broken)
    said: list[str] = []
    shard_writer = ShardWriter(
        store,  # type: ignore[arg-type]
        Claims(events, taken_over=taken_over),  # type: ignore[arg-type]
        queued=queued,
        say=said.append,
    )
    return shard_writer, store, gate, said


def test_the_loop_goes_on_while_shards_are_written_and_waits_when_the_queue_is_full() -> None:
    events: list[tuple[str, int]] = []
    shard_writer, store, gate, _ = writer(events, queued=2)
    with shard_writer:
        shard_writer.submit(0, result())  # returns at once: the thread writes it
        assert store.started.acquire(timeout=WAIT_S) and events == []
        shard_writer.submit(1, result())
        shard_writer.submit(2, result())  # 1 and 2 wait in the queue
        fourth = threading.Thread(target=shard_writer.submit, args=(3, result()))
        fourth.start()
        fourth.join(0.3)
        assert fourth.is_alive()  # a full queue holds the loop back: memory stays bounded
        gate.set()
        fourth.join(WAIT_S)
    # in order, and each claim released only once its shard is written
    assert events == [
        event for shard in range(4) for event in (("write", shard), ("release", shard))
    ]


def test_a_failed_write_is_raised_and_later_shards_are_given_back_unwritten() -> None:
    events: list[tuple[str, int]] = []
    shard_writer, _, gate, _ = writer(events, queued=2, broken=(1,))
    for shard in range(3):  # 0 being written, 1 and 2 queued
        shard_writer.submit(shard, result())
    gate.set()
    with pytest.raises(OSError, match="shard 1"):
        shard_writer.close()
    assert ("write", 0) in events and ("write", 2) not in events
    assert sorted(shard for kind, shard in events if kind == "release") == [0, 1, 2]
    with pytest.raises(OSError, match="shard 1"):  # and the loop learns it at its next hand-over
        shard_writer.submit(3, result())


def test_a_shard_taken_over_by_another_run_is_not_written() -> None:
    events: list[tuple[str, int]] = []
    shard_writer, _, gate, said = writer(events, queued=1, taken_over=(1,))
    gate.set()
    with shard_writer:
        for shard in range(3):
            shard_writer.submit(shard, result())
    assert [shard for kind, shard in events if kind == "write"] == [0, 2]
    assert ("release", 1) in events and said == [
        "shard 1 was taken over by another run; not written"
    ]


def test_queued_zero_writes_in_the_callers_thread() -> None:
    events: list[tuple[str, int]] = []
    shard_writer, _, gate, _ = writer(events, queued=0)
    gate.set()
    with shard_writer:
        shard_writer.submit(5, result())
        assert events == [("write", 5), ("release", 5)]  # done before submit returned


class FullDiskClaims(Claims):
    """Releases fail once the disk is full (``full`` set), as writing a claim file does."""

    full = False

    def release(self, topic: str) -> None:
        if self.full:
            raise OSError("No space left on device")
        super().release(topic)


def test_giving_claims_back_on_a_full_disk_neither_escapes_the_thread_nor_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by issue 12's full-disk scenario (70% of the room a run needs): after a failed write,
    # giving the queued shards' claims back failed too, the error escaped the writer thread (a
    # traceback above the one-line stop) and the thread died with shards still queued.
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: escaped.append(hook.exc_value))
    events: list[tuple[str, int]] = []
    shard_writer, _, gate, _ = writer(events, queued=2, broken=(0,))
    claims = FullDiskClaims(events)
    shard_writer.claims = claims  # type: ignore[assignment]
    for shard in range(3):  # 0 being written, 1 and 2 queued
        shard_writer.submit(shard, result())
    claims.full = True
    gate.set()
    with pytest.raises(OSError, match="shard 0"):
        shard_writer.close()
    assert escaped == [] and not shard_writer._thread.is_alive()
