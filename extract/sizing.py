"""How `sact extract` sizes its pipeline for the machine: decoding processes or GPU decoder
sessions, and the backbone's batch; each overridable (``--workers``, ``--batch-size``).

- A CPU decoder with the backbone on a GPU: a decoding process per core but two (the main loop,
  which gathers batches, and the shard writer's thread keep one each). Decoding is the slower
  stage there (bench/RESULTS.md).
- A CPU decoder with the backbone on the CPU: they share the cores, and decoding a clip costs a
  small part of what the backbone costs (about 1% of its CPU time at ResNet-50 224 px on
  SSv2-like clips: bench/RESULTS.md), so one process per 4 cores (at least one), the rest to
  torch's threads.
- A GPU decoder: two sessions (threads of the main process, each decoding one video at a time)
  per hardware decoder (NVDEC) of the card, so one session demuxes the next file on the CPU while
  the other's frames are decoded; no more than the cores less two.
- The batch: on a GPU ``GPU_BATCH_FRAMES`` frames (32 videos of 8 frames: what bench/gpu.py
  measured ResNet-50 at, 1,097 videos/s on an H200); on a CPU ``CPU_BATCH_VIDEOS`` videos
  (a larger batch does not run faster there, and a CPU batch's features do not depend on it).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

GPU_BATCH_FRAMES = 256
CPU_BATCH_VIDEOS = 16
CORES_PER_CPU_DECODER_WITH_CPU_BACKBONE = 4
CORES_KEPT = 2  # the main loop and the shard writer
SESSIONS_PER_NVDEC = 2
# NVDEC engines per card (NVIDIA's video encode and decode support matrix); others: the default
NVDEC_ENGINES = {"H100": 7, "H200": 7, "A100": 5, "L4": 4, "L40": 3, "A10": 2, "T4": 2}
DEFAULT_NVDEC_ENGINES = 2


def available_cores() -> int:
    """The cores this process may run on (its affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def nvdec_engines(device: torch.device) -> int:
    """The card's hardware video decoders, by its name (``NVDEC_ENGINES``)."""
    name = torch.cuda.get_device_name(device)
    return next(
        (count for card, count in NVDEC_ENGINES.items() if card in name.split()),
        DEFAULT_NVDEC_ENGINES,
    )


@dataclass(frozen=True)
class PipelinePlan:
    """The decoder and the pipeline's sizes a run uses, and how each was chosen."""

    decoder: str
    decoder_version: str
    on_gpu: bool  # the decoder runs on the GPU, in threads of the main process
    workers: int  # decoding processes, or a GPU decoder's sessions
    batch_size: int  # videos per backbone forward
    workers_reason: str
    batch_reason: str

    def describe(self) -> str:
        unit = "GPU decoding sessions" if self.on_gpu else "decoding processes"
        return (
            f"decoder {self.decoder} ({self.decoder_version}); {self.workers} {unit} "
            f"({self.workers_reason}); batch {self.batch_size} videos ({self.batch_reason})"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_pipeline(
    *,
    decoder: str,
    decoder_version: str,
    decoder_on_gpu: bool,
    device: torch.device,
    frames: int,
    workers: int | None = None,
    batch_size: int | None = None,
    cores: int | None = None,
) -> PipelinePlan:
    """The pipeline's sizes for this machine (module docstring); ``workers`` and ``batch_size``
    override them."""
    cores = available_cores() if cores is None else cores
    if workers is not None:
        workers_reason = "--workers"
    elif decoder_on_gpu:
        engines = nvdec_engines(device)
        workers = max(1, min(SESSIONS_PER_NVDEC * engines, cores - CORES_KEPT))
        workers_reason = f"{SESSIONS_PER_NVDEC} per NVDEC engine, {engines} on this card"
    elif device.type == "cuda":
        workers = max(1, cores - CORES_KEPT)
        workers_reason = f"{cores} cores less {CORES_KEPT} for the loop and the writer"
    else:
        workers = max(1, cores // CORES_PER_CPU_DECODER_WITH_CPU_BACKBONE)
        workers_reason = f"1 per {CORES_PER_CPU_DECODER_WITH_CPU_BACKBONE} of {cores} cores"
    if batch_size is not None:
        batch_reason = "--batch-size"
    elif device.type == "cuda":
        batch_size = max(1, GPU_BATCH_FRAMES // frames)
        batch_reason = f"{GPU_BATCH_FRAMES} frames on a GPU"
    else:
        batch_size = CPU_BATCH_VIDEOS
        batch_reason = "on a CPU"
    return PipelinePlan(
        decoder=decoder,
        decoder_version=decoder_version,
        on_gpu=decoder_on_gpu,
        workers=workers,
        batch_size=batch_size,
        workers_reason=workers_reason,
        batch_reason=batch_reason,
    )
