"""bench/gpu.py's options, checked with nothing heavy imported: a wrong one is refused in a
fraction of a second, before the parts (bench/gpu_parts.py) load torch, timm and torchvision."""

from __future__ import annotations

import argparse
from pathlib import Path

# Each part's usual seconds at each scale, the synthetic store's writing included in the first
# part that needs it, for --budget-s: rough estimates (the H200 run of 2026-11-27 took 240 s for
# extraction, loader, training and evaluation together); the JSON's part_seconds are the real ones.
# `steps` starts no row after its own seconds. Its keys are the parts, in the order they run.
PART_SECONDS = {
    "peaks": {"ssv2": 10, "cpu": 10, "tiny": 1},
    "extraction": {"ssv2": 100, "cpu": 120, "tiny": 10},
    "loader": {"ssv2": 90, "cpu": 60, "tiny": 2},
    "steps": {"ssv2": 120, "cpu": 120, "tiny": 10},
    "training": {"ssv2": 30, "cpu": 60, "tiny": 2},
    "flips": {"ssv2": 20, "cpu": 120, "tiny": 2},
    "evaluation": {"ssv2": 40, "cpu": 240, "tiny": 5},
    "sweep": {"ssv2": 450, "cpu": 1200, "tiny": 30},
}
SCALE_NAMES = ("cpu", "ssv2", "tiny")  # bench/gpu_parts.py's SCALES


def wanted_parts(parts: str) -> list[str]:
    """The part names of a --parts value."""
    return [name.strip() for name in parts.split(",") if name.strip()]


def parse_options(description: str) -> argparse.Namespace:
    """The command line's options; a wrong one exits 2 with argparse's one line."""
    names = list(PART_SECONDS)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=SCALE_NAMES, default="ssv2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", default=",".join(names), help=f"of {', '.join(names)}")
    parser.add_argument("--readers", type=int, default=None, help="loader threads (default: cores)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for videos and stores")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="skip a part that would end after this"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = sorted(set(wanted_parts(args.parts)) - set(names))
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; parts: {', '.join(names)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s:g}")
    return args
