"""What `sact train` and `sact evaluate` are asked to do: their configs, each default written once.

The command line takes its option defaults from these dataclasses, and checks them before it
imports torch, so this module imports nothing heavy (nor does the `sact.fewshot` package itself).

Why the training defaults are what they are: fewshot/training.py.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sact.common.errors import SactError
from sact.data.split_lists import SPLIT_PARTS, resolve_split_dir
from sact.fewshot.kinds import is_model, kinds_by_option, model_names, one_of

CHECKPOINTS = ("best", "last")  # the checkpoints a run keeps
# a run directory holds this file once its first checkpoint is written
LAST_CHECKPOINT = "checkpoints/last/checkpoint.json"
OPTIMIZERS = ("adamw", "adam", "sgd")
# how SA-CT's match scales its distance: "seed" as the seed writes it (the frame sum over T'²),
# "mean" (the frame sum over T'), "sum" (the frame sum itself); docs/MODEL.md
DISTANCES = ("seed", "mean", "sum")
LOGGERS = ("tensorboard",)  # besides metrics.jsonl, which every run writes


class TrainingError(SactError):
    """A training run that cannot start or continue as asked; one line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    feats: str
    feature_set: str | None = None
    split: str | None = None  # split list name or folder; None: the store's, else its labels
    model: str = "sact"
    way: int = 5
    shot: int = 5
    query: int = 5
    frames: int | None = None  # frames the model sees; None: all stored frames
    d_k: int | None = None  # projection width (learned heads); None: the model's default
    tmixer: bool = True
    cpe: bool = True
    # SA-CT deviations from the seed that make it train (docs/MODEL.md, "Training at the seed's
    # scale"); input_norm=False with distance="seed" is the seed's formula
    input_norm: bool = True
    distance: str = "sum"
    iterations: int = 10_000
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup: int = 100
    tasks_per_batch: int = 4
    val_every: int = 500
    val_episodes: int = 300
    batch_size: int = 32  # videos per forward when embedding val videos
    out: str | None = None  # run directory; None: runs/<model>-<feature set>-<time>
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    cache_gb: float | None = None  # GPU + host cache cap; None: memory shares (features.py)
    workers: int = 4  # loader threads: host memory and store reads ahead of the step
    prefetch: int = 4  # batches read ahead when not all on the device
    # stored views (docs/STORE.md) training draws from, one per video per episode: "all" (every
    # view the whole train split has), or names joined by ","; saved resolved, as names
    views: str = "all"
    log: str | None = None  # "tensorboard": also TensorBoard event files in the run

    def model_options(self) -> dict[str, Any]:
        """Every model option the kind takes (None: the model's default), passed even at its
        default here, which need not be the model's (SA-CT's input_norm and distance). An option
        given away from its default to a kind that does not take it is refused."""
        defaults = {f.name: f.default for f in fields(self)}
        options = {}
        for name, kinds in kinds_by_option().items():
            value = getattr(self, name)
            if self.model in kinds:
                if value is not None:
                    options[name] = value
            elif value != defaults[name]:
                raise TrainingError(
                    f"--{name.replace('_', '-')} applies to {', '.join(kinds)} only"
                )
        return options

    def check(self) -> None:
        if not is_model(self.model):
            raise TrainingError(f"--model must be {one_of(model_names())}, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.distance not in DISTANCES:
            raise TrainingError(f"--distance must be one of {', '.join(DISTANCES)}")
        positive = {
            "iterations": self.iterations,
            "tasks-per-batch": self.tasks_per_batch,
            "val-every": self.val_every,
            "val-episodes": self.val_episodes,
            "batch-size": self.batch_size,
            "workers": self.workers,
            "prefetch": self.prefetch,
        }
        for name, value in positive.items():
            if value < 1:
                raise TrainingError(f"--{name} must be at least 1, got {value}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup < 0:
            raise TrainingError("--lr must be positive, weight decay and warm-up non-negative")
        if self.log is not None and self.log not in LOGGERS:
            raise TrainingError(f"--log must be {' or '.join(LOGGERS)}, got {self.log!r}")
        if self.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise TrainingError(
                "--log tensorboard needs the tensorboard package: pip install 'sact[tensorboard]'"
            )
        if self.split is not None:
            resolve_split_dir(self.split)
        if not self.resume:
            # imported here: numpy, kept off the command line's start-up
            from sact.store.feature_set import is_url

            if not is_url(self.feats) and not Path(self.feats).exists():
                raise TrainingError(f"no feature store at {self.feats}")


def read_train_config(path: Path) -> TrainConfig:
    """The TrainConfig a run saved in its config.json (keys of other sact versions ignored)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["train"]
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except FileNotFoundError as error:
        raise TrainingError(f"{path} does not exist") from error
    except (OSError, UnicodeDecodeError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise TrainingError(f"cannot read {path} as a run's config: {error}") from error


def config_to_rerun(path: Path, given: TrainConfig, *, options: Iterable[str]) -> TrainConfig:
    """`sact train --config RUN/config.json`: the saved config with ``options`` (the options typed
    on the command line) taken from ``given``. A new run, in a new run directory unless --out
    is typed, never a continuation of the saved one (that is --resume)."""
    saved = read_train_config(path)
    overrides = {name: getattr(given, name) for name in options if hasattr(saved, name)}
    return replace(saved, **{"out": None, "resume": False, **overrides})


class EvaluationError(SactError):
    """An evaluation that cannot run as asked; the message is one line for the user."""


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation depends on; saved in the results JSON."""

    run: str | None = None  # a run directory; with neither run nor ckpt: the latest run
    ckpt: str | None = None  # a checkpoint folder (or its checkpoint.json / model.safetensors)
    checkpoint: str = "best"  # which checkpoint of a run: best or last
    feats: str | None = None  # None: the store the checkpoint was trained on
    feature_set: str | None = None  # None: the checkpoint's feature set
    split: str = "test"  # the split part scored
    split_list: str | None = None  # split list name or folder; None: the checkpoint's split
    way: int = 5
    shots: tuple[int, ...] = (1, 5)
    query: int = 1
    episodes: int = 10_000
    seed: int = 0
    episodes_file: str | None = None  # read if it exists, else written
    compare: tuple[str, ...] = ()  # other run directories, scored on the same episodes
    # also score with each episode's logits averaged over every stored view (test-time
    # augmentation, docs/STORE.md), reported apart from the canonical view's accuracy
    tta: bool = False
    device: str = "auto"
    batch_size: int = 32  # videos per embedding forward
    workers: int = 4  # reader threads
    runs_dir: str = "runs"  # where "the latest run" is looked for
    out: str | None = None  # also the results here; every run keeps its own (evaluations/)

    def check(self) -> None:
        """The options and the paths they name, checked before torch is imported."""
        if self.run and self.ckpt:
            raise EvaluationError("pass --run or --ckpt, not both")
        if self.checkpoint not in CHECKPOINTS:
            raise EvaluationError(f"--checkpoint must be best or last, got {self.checkpoint!r}")
        if self.split not in SPLIT_PARTS:
            raise EvaluationError(f"--split must be train, val or test, got {self.split!r}")
        if self.episodes < 1 or not self.shots:
            raise EvaluationError("need --episodes >= 1 and at least one --shot")
        if self.split_list is not None:
            resolve_split_dir(self.split_list)
        for run in (self.run, *self.compare):
            if run is not None and not Path(run).is_dir():
                raise EvaluationError(f"run directory {run} does not exist")
        if self.ckpt is not None and not Path(self.ckpt).exists():
            raise EvaluationError(f"no checkpoint at {self.ckpt}")
        if self.run is None and self.ckpt is None:
            latest_run(Path(self.runs_dir))


def latest_run(runs_dir: Path) -> Path:
    """The run under `runs_dir` whose last checkpoint was written most recently."""
    markers = [marker for marker in runs_dir.glob(f"*/{LAST_CHECKPOINT}") if marker.is_file()]
    if not markers:
        raise EvaluationError(
            f"no trained run under {runs_dir}/; train one with `sact train` or pass --run/--ckpt"
        )
    return max(markers, key=lambda marker: marker.stat().st_mtime).parents[2]


@dataclass(frozen=True)
class ExplainConfig:
    """What `sact explain` draws: a query video's attention onto a support video."""

    run: Path  # a SA-CT run directory
    query: str  # video ids in the run's feature set
    support: str
    out: Path | None = None  # None: <run>/attention-<query>-<support>.png
    checkpoint: str = "best"
    patches: int = 2  # query patches drawn per frame
    feats: str | None = None  # None: the store the run was trained on
