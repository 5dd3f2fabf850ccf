"""What `sact demo` is asked to do: its config, each default written once.

The command line takes its option defaults from these dataclasses before it imports torch, so this
module imports nothing heavy. Why the demo's defaults are what they are: demo/run.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo depends on; saved in demo.json."""

    out: Path = Path("sact-demo")
    seed: int = 0
    task: str = "motion"  # a task of demo/synthetic.py, or "all"
    seeds: int = 1  # training seeds per variant: seed, seed + 1, ...
    # the dataset
    videos_per_class: int = 20
    video_frames: int = 16
    video_size: int = 64
    # MPEG-4 Part 2 in AVI (the HMDB/UCF container): its encoder wrote the same bytes in every run
    # measured, while libx264 (mp4) wrote slightly different frames when the CPU was busy, and
    # the demo's numbers should not depend on the machine's load.
    video_suffix: str = ".avi"
    # stage 1
    backbone: str = "vit_tiny_patch16_224"
    size: int = 64
    frames: int = 8
    workers: int = 1
    # stage 2
    d_k: int = 128
    iterations: int = 200
    lr: float = 3e-3
    warmup: int = 20
    tasks_per_batch: int = 1
    val_every: int = 100
    val_episodes: int = 100
    episodes: int = 1000
    way: int = 5
    train_shot: int = 5
    train_query: int = 3
    shots: tuple[int, ...] = (1, 5)
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            return list(value) if isinstance(value, tuple) else value

        return {key: plain(value) for key, value in asdict(self).items()}
