"""Atomic claims: how independent runs share work without stepping on each other.

Both stages use them: extraction runs claim the shards of a feature set, and `sact sweep`'s
processes (one command, or the ranks of a torchrun job) claim the runs of a sweep
(fewshot/sweep.py), so a process that dies leaves its work to whoever runs the same command next.

Two people in a lab may start ``sact extract`` on the same feature set at the same time, on the same
machine or on two machines writing to one shared filesystem or bucket. Each run claims a shard
before it works on it and writes only shards it holds, so no shard is written by two runs at once.
The feature set's creation and its growth (``FeatureSetWriter.append``) are guarded the same way,
under the topic ``"setup"``.

A claim is a small JSON object written with an exclusive create, the one atomic primitive both kinds
of store offer:

- a local or NFS directory: zarr's ``LocalStore.set_if_not_exists`` (write a temporary file, then
  ``os.link`` it to the final name, which fails if the name exists);
- S3 and S3-compatible servers: a conditional PUT (``If-None-Match: *``, s3fs ``mode="create"``).

Claims live in a zarr group, next to the feature sets in a group that no reader looks into::

    feats.zarr/.sact-claims/<feature-set>/<topic>/<generation>.json
    <sweep>/.claims/.sact-claims/runs/<run>/<generation>.json       (a sweep's runs)

A topic's current claim is its highest generation. Taking a topic over (its holder released it or
is gone) means creating the next generation, never overwriting or deleting one, so two runs racing
for a topic cannot both win. A claim is free when it was released, when its holder ran on this host
and that process is gone (a killed run), or when its heartbeat is older than ``stale_after`` seconds
(a killed run on another host, or a pid reused here). A holder refreshes its heartbeats from a
background thread.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from sact.common.errors import SactError

CLAIMS_PREFIX = ".sact-claims"
SETUP = "setup"
DEFAULT_STALE_AFTER_S = 600.0


class ClaimError(SactError):
    """A claim that could not be taken in time; the message names the run that holds it."""


@dataclass(frozen=True)
class RunInfo:
    """Who a run is, as other runs see it in its claims."""

    run: str
    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls, started: float | None = None) -> RunInfo:
        """This process as a run started at ``started`` (seconds since the epoch; now if None)."""
        when = time.time() if started is None else started
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), when)

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run[:8]} (host {self.host}, pid {self.pid}, started {started})"


@dataclass(frozen=True)
class Claim:
    """One generation of one topic's claim, as stored."""

    topic: str
    generation: int
    holder: RunInfo
    heartbeat: float
    released: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Claim:
        fields = json.loads(data)
        return cls(
            topic=str(fields["topic"]),
            generation=int(fields["generation"]),
            holder=RunInfo(**fields["holder"]),
            heartbeat=float(fields["heartbeat"]),
            released=bool(fields["released"]),
        )


def process_start_time() -> float:
    """When this process started, in seconds since the epoch: `sact extract` commands started
    together are runs started together, however long each takes to import torch and load its
    backbone. From /proc (Linux: the start in clock ticks after boot, field 22 of
    /proc/self/stat); elsewhere, now."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _topic_name(topic: str) -> str:
    if not topic or "/" in topic or topic.startswith("."):
        raise ValueError(f"bad claim topic {topic!r}")
    return topic


class ClaimBook:
    """The claims one run holds on one scope (a feature set, a sweep's runs) of one zarr group."""

    def __init__(
        self,
        root: zarr.Group,
        scope: str,
        *,
        run: RunInfo | None = None,
        stale_after: float = DEFAULT_STALE_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A group of its own, so zarr lists it as a member instead of warning about a stray folder
        # (feature_set_names leaves it out: feature set names never start with ".").
        # ContainsGroupError: zarr saw no group, then another process created it before zarr did
        with suppress(zarr.errors.ContainsGroupError):
            root.require_group(CLAIMS_PREFIX)
        self.store = root.store
        self.scope = scope
        self.prefix = "/".join(part for part in (root.path, CLAIMS_PREFIX, scope) if part)
        self.run = run or RunInfo.this_process()
        self.stale_after = stale_after
        self.clock = clock
        self.held: dict[str, Claim] = {}
        self._lock = threading.Lock()

    # ---- raw keys ----

    def _key(self, topic: str, generation: int) -> str:
        return f"{self.prefix}/{_topic_name(topic)}/{generation:06d}.json"

    def _read(self, topic: str, generation: int) -> Claim | None:
        buffer = sync(self.store.get(self._key(topic, generation), default_buffer_prototype()))
        return None if buffer is None else Claim.from_json(buffer.to_bytes())

    def _overwrite(self, claim: Claim) -> None:
        key = self._key(claim.topic, claim.generation)
        sync(self.store.set(key, default_buffer_prototype().buffer.from_bytes(claim.to_json())))

    def _create_exclusive(self, claim: Claim) -> bool:
        """Write ``claim`` unless its key exists; True when this call created it."""
        key = self._key(claim.topic, claim.generation)
        data = claim.to_json()
        if isinstance(self.store, zarr.storage.FsspecStore):
            path = f"{self.store.path.rstrip('/')}/{key}"
            try:
                sync(self.store.fs._pipe_file(path, data, mode="create"))
                return True
            except FileExistsError:
                # Perhaps our own: a PUT that reached the bucket, whose answer was lost, retried.
                return self._read(claim.topic, claim.generation) == claim
            except (TypeError, NotImplementedError):
                pass  # no exclusive create here: fall back to zarr's, read back below
        buffer = default_buffer_prototype().buffer.from_bytes(data)
        sync(self.store.set_if_not_exists(key, buffer))
        # Whoever created the key wrote their own run id into it.
        return self._read(claim.topic, claim.generation) == claim

    # ---- state ----

    def current(self, topic: str) -> Claim | None:
        """The topic's latest claim (highest generation), or None if it was never claimed."""
        latest = None
        generation = 0
        while (claim := self._read(topic, generation)) is not None:
            latest = claim
            generation += 1
        return latest

    def is_free(self, claim: Claim | None) -> bool:
        if claim is None or claim.released:
            return True
        holder = claim.holder
        if holder.run == self.run.run:
            return False
        if holder.host == self.run.host and not process_is_alive(holder.pid):
            return True  # killed on this host: no need to wait for its heartbeat to go stale
        # Any other host, or a reused pid here: a holder that stopped beating is gone.
        return self.clock() - claim.heartbeat > self.stale_after

    def holder_of(self, topic: str) -> RunInfo | None:
        """The live run holding ``topic``, or None when the topic is free."""
        claim = self.current(topic)
        return None if self.is_free(claim) else claim.holder  # type: ignore[union-attr]

    # ---- taking and giving back ----

    def try_claim(self, topic: str) -> bool:
        """Claim ``topic`` if it is free; False when another live run holds it or wins the race."""
        if topic in self.held:
            return True
        latest = self.current(topic)
        if not self.is_free(latest):
            return False
        generation = 0 if latest is None else latest.generation + 1
        claim = Claim(topic, generation, self.run, heartbeat=self.clock())
        if not self._create_exclusive(claim):
            return False
        with self._lock:
            self.held[topic] = claim
        return True

    def done_by_another_run_meanwhile(self, topic: str) -> bool:
        """Whether the claim before this run's (held) on ``topic`` was another run's, released
        after this run started: that run has just done the topic's work, and its failures are
        fresh, not for this run to retry."""
        claim = self.held.get(topic)
        if claim is None or claim.generation == 0:
            return False
        before = self._read(topic, claim.generation - 1)
        return (
            before is not None
            and before.released
            and before.holder.run != self.run.run
            and before.heartbeat >= self.run.started
        )

    def still_holds(self, topic: str) -> bool:
        """True when no other run took ``topic`` over (checked right before writing a shard)."""
        claim = self.held.get(topic)
        return claim is not None and not self._superseded(claim)

    def _superseded(self, claim: Claim) -> bool:
        return self._read(claim.topic, claim.generation + 1) is not None

    def release(self, topic: str) -> None:
        with self._lock:
            claim = self.held.pop(topic, None)
        if claim is not None and not self._superseded(claim):
            self._overwrite(replace(claim, released=True, heartbeat=self.clock()))

    def release_all(self) -> None:
        for topic in list(self.held):
            self.release(topic)

    def refresh(self) -> None:
        """Renew the heartbeat of every claim held, so other hosts do not take them as stale."""
        with self._lock:
            claims = list(self.held.values())
        for claim in claims:
            renewed = replace(claim, heartbeat=self.clock())
            self._overwrite(renewed)
            with self._lock:
                if claim.topic in self.held:
                    self.held[claim.topic] = renewed

    @contextmanager
    def keep_alive(self) -> Iterator[ClaimBook]:
        """Refresh heartbeats every quarter of ``stale_after`` while the block runs; release every
        claim still held when it ends, however it ends."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.stale_after / 4):
                self.refresh()

        thread = threading.Thread(target=beat, name="sact-claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release_all()

    @contextmanager
    def hold(self, topic: str, *, wait_s: float, poll_s: float = 0.5) -> Iterator[None]:
        """Hold ``topic`` for the block, waiting up to ``wait_s`` for another run to let it go."""
        deadline = time.monotonic() + wait_s
        while not self.try_claim(topic):
            if time.monotonic() >= deadline:
                holder = self.holder_of(topic)
                who = holder.describe() if holder else "another run"
                raise ClaimError(
                    f"{topic} of {self.scope} is held by {who}; wait for it to finish, or "
                    f"if it was killed on another host, its claim expires {self.stale_after:.0f} s "
                    "after its last heartbeat"
                )
            time.sleep(poll_s)
        try:
            yield
        finally:
            self.release(topic)
