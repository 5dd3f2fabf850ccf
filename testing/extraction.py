"""The one tiny extraction config of the tests: a random-init ResNet-10t at 32 px, 4 frames, on
the CPU, decoding in-process. Tests change what they test (``tiny_config(..., size=64)``) and
nothing else, and run it here or as `sact extract` subprocesses (``tiny_cli_options``).

``extract_in_this_process`` uses one torch thread like a subprocess started with
OMP_NUM_THREADS=1, so their float sums happen in the same order and the stores can be compared
bit for bit. Kept free of torch at import time: the claim racers import the test modules in fresh
processes.
"""

from __future__ import annotations

import io
from pathlib import Path

from sact.extract.config import ExtractConfig

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
        elif value is not None and value is not False:  # None, False: the command's default
            arguments += [flag, str(value)]
    return arguments


def tiny_config(videos: Path, out: Path | str, **options: object) -> ExtractConfig:
    """TINY updated with ``options`` (named as in ExtractConfig): ``videos`` into ``out``."""
    return ExtractConfig(videos=videos, out=str(out), **{**TINY, **options})  # type: ignore[arg-type]


def extract_in_this_process(videos: Path, out: Path, **options: object) -> str:
    """Run TINY updated with ``options`` here, on one thread; returns what the run printed.

    Under pytest the thread count is put back after the test by the autouse fixture in
    tests/conftest.py.
    """
    import torch
    from rich.console import Console

    from sact.extract.pipeline import run_extraction

    torch.set_num_threads(1)
    said = io.StringIO()
    run_extraction(tiny_config(videos, out, **options), console=Console(file=said, width=200))
    return said.getvalue()
