"""The `--device` option of every command: "auto", "cpu", "cuda", "cuda:1", ..."""

from __future__ import annotations

import torch

from sact.extract.errors import SactError


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
