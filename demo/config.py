"""What `sact demo` is asked to do: its config, each default written once.

The demo trains and evaluates with `sact train`'s and `sact evaluate`'s own configs: `training` and
`evaluation` hold only what the demo changes from their defaults (the store, split, model, run
folder and seed are set per run). The command line takes the demo's options from here before it
imports torch, so this module imports nothing heavy. Why the demo's values are what they are:
demo/run.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sact.common.options import option
from sact.fewshot.config import EvalConfig, TrainConfig

# how every variant trains (the nearest mean without d_k)
TRAINING = TrainConfig(
    query=3, d_k=128, iterations=200, lr=3e-3, warmup=20, tasks_per_batch=1, val_every=100,
    val_episodes=100,
)  # fmt: skip
# how every run is scored
EVALUATION = EvalConfig(episodes=1000)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo depends on; saved in demo.json."""

    out: Path = option(Path("sact-demo"), help="Folder for dataset, store, runs, plots.")
    task: str = option(  # a task of demo/synthetic.py, or "all"
        "motion", help="appearance, order, motion, clutter, or all of them."
    )
    # seed, seed + 1, ...
    seeds: int = option(1, help="Training seeds per model variant.")
    seed: int = option(0, help="Seed of the dataset, weights and episodes.")
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
    # every stage
    device: str = "cpu"
    # stage 2
    training: TrainConfig = TRAINING
    evaluation: EvalConfig = EVALUATION

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            return list(value) if isinstance(value, tuple) else value

        return {key: plain(value) for key, value in asdict(self).items()}
