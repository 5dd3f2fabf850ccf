"""The tiny extraction that multi-process tests run in this process and as `sact` subprocesses.

Both sides use one torch thread (subprocesses get OMP_NUM_THREADS=1), so their float sums happen
in the same order and the stores can be compared bit for bit. Kept free of torch at import time:
the claim racers import the test modules in fresh processes.
"""

from __future__ import annotations

import io
from pathlib import Path

TINY = {
    "backbone": "resnet10t",
    "random_init": True,
    "size": 32,
    "frames": 4,
    "device": "cpu",
    "workers": 0,
    "name": "tiny",
}


def tiny_cli_options(**options: object) -> list[str]:
    """`sact extract` options: TINY updated with ``options`` (named as in ExtractConfig)."""
    arguments = []
    for key, value in {**TINY, **options}.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            arguments.append(flag)
        else:
            arguments += [flag, str(value)]
    return arguments


def extract_in_this_process(videos: Path, out: Path, **options: object) -> str:
    """Run TINY updated with ``options`` here, on one thread; returns what the run printed.

    The thread count is put back after the test by the autouse fixture in conftest.py.
    """
    import torch
    from rich.console import Console

    from sact.extract.config import ExtractConfig
    from sact.extract.pipeline import run_extraction

    torch.set_num_threads(1)
    said = io.StringIO()
    config = ExtractConfig(videos=videos, out=str(out), **{**TINY, **options})  # type: ignore[arg-type]
    run_extraction(config, console=Console(file=said, width=200))
    return said.getvalue()
