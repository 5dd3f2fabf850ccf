"""Tensors from .pt files written by others (weights files, training's resume state): read with
``torch.load(weights_only=True)``, which builds tensors and plain containers and runs no code."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sact.common.errors import SactError

# How torch names the object a weights-only load refused: "Unsupported global: GLOBAL mod.name"
REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


class UnsafeFileError(SactError):
    """A file that holds a pickled object besides tensors; the message is one line."""


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file holding anything but tensors and
    plain containers (a pickled class, a function) is refused in one line. Other failures (a
    missing or damaged file) raise as ``torch.load`` raises them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = REFUSED_GLOBAL.search(str(error))
        what = f"pickled code ({found[1]})" if found else "pickled objects"
        raise UnsafeFileError(
            f"{path} holds {what} besides tensors; refused: sact reads only tensors from .pt "
            "files, since unpickling anything else can run code"
        ) from error
