"""Extraction under ``torchrun``: which rank this process is, and which shards it owns.

``torchrun --nproc-per-node G $(which sact) extract ...`` (or ``python -m torch.distributed.run``)
starts G processes per machine and tells each its place through the environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. Without those variables, sact runs
as a single process (rank 0 of 1) and never touches ``torch.distributed``.

Rank 0 creates or opens the feature set while the others wait at a barrier; then every rank opens
it and works on its own whole shards, so no two ranks ever write the same shard file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from sact.extract.errors import SactError

# Rank 0 may spend a while listing videos and creating a large feature set on object storage.
BARRIER_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Rank:
    """This process's place among the extraction processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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
    )
    if rank.world_size < 1 or not 0 <= rank.rank < rank.world_size:
        raise SactError(f"RANK={rank.rank} WORLD_SIZE={rank.world_size}: rank out of range")
    return rank


def device_for(rank: Rank, device: torch.device) -> torch.device:
    """The device a rank runs its backbone on: a bare ``cuda`` means the GPU of its local rank."""
    if rank.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", rank.local_rank)
    return device


def owned_shards(shards: Sequence[int], rank: Rank) -> list[int]:
    """The shards this rank works on: every ``world_size``-th one, starting at its rank.

    Every rank must pass the same ``shards`` (they all read them after the barrier); the ranks'
    lists are then disjoint and together cover ``shards``.
    """
    return list(shards[rank.rank :: rank.world_size])


@contextmanager
def process_group(rank: Rank, *, device: torch.device) -> Iterator[None]:
    """Join the torchrun process group for the block: nccl for GPUs, gloo for CPUs.

    Does nothing for a single process, or when the caller already set up the group.
    """
    if not rank.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend, rank=rank.rank, world_size=rank.world_size, timeout=BARRIER_TIMEOUT
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(rank: Rank) -> None:
    """Wait until every rank arrives; a no-op for a single process."""
    if rank.distributed and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_ranks_agree(rank: Rank, value: int) -> int:
    """The maximum of ``value`` over the ranks (e.g. 1 if any rank failed), for a shared verdict."""
    if not (rank.distributed and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
