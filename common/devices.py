"""The `--device` option of every command: "auto", "cpu", "cuda", "cuda:1", ...; which reduced
precision a CUDA device computes natively; and the autocast the few-shot heads run under."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from sact.common.errors import SactError

# bfloat16 tensor cores arrived with Ampere (compute capability 8.0).
NATIVE_BF16_CAPABILITY = (8, 0)


def resolve_device(name: str) -> torch.device:
    """The torch device `name` asks for; "auto" is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SactError(f"unknown device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SactError(f"device {name!r} asked for, but torch sees no CUDA device here")
    return device


def bf16_is_native(device: torch.device) -> bool:
    """Whether the CUDA `device` computes bfloat16 in hardware.

    A bare ``torch.cuda.is_bf16_supported()`` also says yes where bfloat16 is only emulated (V100,
    T4), several times slower there than float16; that case must pick float16.
    """
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the including_emulation argument
        return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY


def autocast_for(device: torch.device) -> tuple[AbstractContextManager, torch.dtype | None]:
    """The mixed precision of stage 2 (training, evaluation, the benchmarks of the heads) on
    ``device``, and its dtype: on CUDA autocast to bfloat16 where the GPU has it natively, else
    float16; float32 (no autocast, dtype None) elsewhere. Extraction never autocasts: it keeps the
    stored features close to float32 (extract/backbone.py, ComputePlan)."""
    if device.type != "cuda":
        return nullcontext(), None
    dtype = torch.bfloat16 if bf16_is_native(device) else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock time covers it (benchmarks)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
