"""Under ``torchrun``: which rank this process is, its GPU, and which shards it owns.

Both stages run under it: extraction (each rank owns whole shards, as below) and `sact sweep` (each
rank claims runs of the sweep, fewshot/sweep.py).

``torchrun --nproc-per-node G $(which sact) extract ...`` (or ``python -m torch.distributed.run``)
starts G processes per machine and tells each its place through the environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``. Without
those variables, sact runs as a single process (rank 0 of 1) and never touches
``torch.distributed``.

Rank 0 creates or opens the feature set while the others wait; then every rank opens it and works
on its own whole shards, so no two ranks ever write the same shard file. The ranks move no tensors
between them, so they join no process group (no NCCL, no collective timeouts): they talk through
the key-value store of torchrun's rendezvous (a TCPStore), polling it. A rank may finish days
before the others (another run took its shards) and waits without a timeout; a rank that dies
ends the job, as torchrun stops the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from sact.common.errors import SactError

# How long the ranks may take to meet at the start (the TCPStore's own timeout).
RENDEZVOUS_TIMEOUT = timedelta(minutes=30)
POLL_S = 1.0
SETUP_KEY = "sact/setup"  # rank 0's verdict on creating or opening the feature set
BARRIER_PREFIX = "sact/barrier/"  # + name: how many ranks have reached that barrier
FINISHED = "finished"  # the barrier at the end of the run
LEFT_KEY = "sact/left"  # how many ranks saw everyone finished and may exit


@dataclass(frozen=True)
class Rank:
    """This process's place among the extraction processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SactError(f"{name}={value!r} in the environment is not an integer") from None


def rank_from_env() -> Rank:
    """This process's rank as torchrun set it; rank 0 of 1 when not launched by torchrun."""
    rank = Rank(
        rank=_env_int("RANK", 0),
        world_size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", 1),
    )
    if rank.world_size < 1 or not 0 <= rank.rank < rank.world_size:
        raise SactError(f"RANK={rank.rank} WORLD_SIZE={rank.world_size}: rank out of range")
    return rank


def device_for(rank: Rank, device: torch.device) -> torch.device:
    """The device a rank runs its backbone on: a bare ``cuda`` means GPU ``LOCAL_RANK % count``.

    The modulo covers launchers that show each rank only its own GPU (``CUDA_VISIBLE_DEVICES``
    per rank: every rank sees one device, index 0). An explicit ``cuda:N`` would put every rank on
    the same GPU, so it is refused when there are several ranks.
    """
    if not (rank.distributed and device.type == "cuda"):
        return device
    if device.index is not None:
        raise SactError(
            f"--device {device} names one GPU for all {rank.world_size} ranks; use --device cuda "
            "(each rank takes the GPU of its LOCAL_RANK) or set CUDA_VISIBLE_DEVICES per rank"
        )
    return torch.device("cuda", rank.local_rank % torch.cuda.device_count())


def owned_shards(shards: Sequence[int], rank: Rank) -> list[int]:
    """The shards this rank works on: every ``world_size``-th one, starting at its rank.

    Every rank must pass the same ``shards`` (they all read them once rank 0 has set up the
    feature set); the ranks' lists are then disjoint and together cover ``shards``.
    """
    return list(shards[rank.rank :: rank.world_size])


class Job:
    """The torchrun job this process is one rank of, seen through the rendezvous store.

    ``store`` is None for a single process: then there is nobody to tell or wait for.
    """

    def __init__(self, rank: Rank, store: dist.Store | None, *, poll_s: float = POLL_S) -> None:
        self.rank = rank
        self.store = store
        self.poll_s = poll_s

    def _poll(self, done: Callable[[], bool]) -> None:
        while not done():
            time.sleep(self.poll_s)

    def _count(self, key: str) -> int:
        assert self.store is not None
        return self.store.add(key, 0)

    def setup_failed(self, failed: bool) -> bool:
        """Rank 0 tells whether its setup ``failed``; every rank returns rank 0's verdict."""
        if self.store is None:
            return failed
        if self.rank.is_main:
            self.store.set(SETUP_KEY, "failed" if failed else "ok")
            return failed
        self._poll(lambda: self.store.check([SETUP_KEY]))  # type: ignore[union-attr]
        return self.store.get(SETUP_KEY) == b"failed"

    def barrier(self, name: str) -> None:
        """Return once every rank has reached the barrier ``name`` (each name serves once),
        however long the others take."""
        if self.store is None:
            return
        key = f"{BARRIER_PREFIX}{name}"
        self.store.add(key, 1)
        self._poll(lambda: self._count(key) >= self.rank.world_size)

    def wait_for_all(self) -> None:
        """The end of the run: return once every rank has finished its shards."""
        self.barrier(FINISHED)
        if self.store is not None:
            self.store.add(LEFT_KEY, 1)
            if self.rank.is_main:
                # Rank 0's process may host the store: it leaves last, once all have read it.
                self._poll(lambda: self._count(LEFT_KEY) >= self.rank.world_size)


@contextmanager
def joined(rank: Rank, *, device: torch.device) -> Iterator[Job]:
    """Meet the job's other ranks at torchrun's rendezvous (``MASTER_ADDR:MASTER_PORT``) and make
    the rank's GPU the current one; a single process meets nobody. A bare ``cuda`` (a single
    process) stays on the current GPU: torch's set_device needs an index."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if not rank.distributed:
        yield Job(rank, None)
        return
    try:
        store, _, _ = next(
            dist.rendezvous(
                "env://", rank=rank.rank, world_size=rank.world_size, timeout=RENDEZVOUS_TIMEOUT
            )
        )
    except (ValueError, RuntimeError) as error:  # missing MASTER_* variables, unreachable host
        raise SactError(f"rank {rank.rank} cannot join the torchrun job: {error}") from error
    yield Job(rank, store)
