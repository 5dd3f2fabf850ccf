"""What `sact train`, `sact evaluate` and `sact explain` are asked to do: their configs.

Each option of those commands is declared once, here, as a field carrying its help
(sact.common.options); the command line is built from the fields, and checks a config before it
imports torch, so this module imports nothing heavy (nor does the `sact.fewshot` package itself).
A saved config.json is merged with the options given in one place, `prepare_training`.

Why the training defaults are what they are: fewshot/training.py.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sact.common.errors import SactError
from sact.common.options import (
    Checked,
    checked,
    declared_options,
    model_option,
    option,
    option_name,
)
from sact.data.split_lists import SPLIT_PARTS, resolve_split_dir
from sact.fewshot.kinds import is_model, model_kind, model_kinds, model_names, one_of

# the checkpoints a run keeps: the best trained one, the latest, and step 0 (fewshot/selection.py)
CHECKPOINTS = ("best", "last", "untrained")
CONFIG_FILE = "config.json"  # a run's settings, in its directory
# a run directory holds this file once its first checkpoint is written
LAST_CHECKPOINT = "checkpoints/last/checkpoint.json"
OPTIMIZERS = ("adamw", "adam", "sgd")
# how SA-CT's match scales its distance: "seed" as the seed writes it (the frame sum over T'²),
# "mean" (the frame sum over T'), "sum" (the frame sum itself); docs/MODEL.md
DISTANCES = ("seed", "mean", "sum")
MOST_PATCHES = 4  # query patches `sact explain` draws per frame, at most
LOGGERS = ("tensorboard",)  # besides metrics.jsonl, which every run writes
# the precision policies of stage 2 (fewshot/precision.py says what each computes in); auto and
# legacy resolve per device, legacy being what sact computed before it had policies
PRECISIONS = (
    "auto", "float32", "tf32", "bf16-keys", "bf16-keys-tf32", "bf16", "fp16-keys", "legacy",
)  # fmt: skip
LEGACY_PRECISION = "legacy"  # a run saved without a policy trained under it
PRECISION_HELP = (
    f"Precision policy: {', '.join(PRECISIONS)}; auto: float32 on the CPU, bf16-keys-tf32 on "
    "CUDA (fewshot/precision.py)."
)
# how a training step runs (fewshot/step.py); the same arithmetic, in another order or fused
STEPS = ("auto", "eager", "batched", "compiled", "graphs")
# what can change when a run is resumed: where and how it runs, never what it computes (the step
# mode changes only the order of float sums, as the device does)
RUNTIME_FIELDS = ("device", "cache_gb", "workers", "prefetch", "resume", "log", "step")
DEVICE_HELP = "auto, cpu, cuda, cuda:1, ..."


class TrainingError(SactError):
    """A training run that cannot start or continue as asked; one line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    # "": not given, which only a resumed or rerun run may leave (its saved config names it)
    feats: str = option("", help="Feature store (.zarr path or URL).")
    feature_set: str | None = option(
        None, help="Feature set in the store; needed if it holds several."
    )
    # None: the store's split, else its labels
    split: str | None = option(
        None, help="Split list: a built-in name or a folder; default: the store's split."
    )
    model: str = option("sact", help=f"{one_of(model_names())}.")
    way: int = option(5, help="Classes per episode, N.")
    shot: int = option(5, help="Support videos per class, K.")
    query: int = option(5, help="Query videos per class, Q.")
    frames: int | None = option(None, help="Frames the model sees; default: all stored frames.")
    # the model options: each kind takes those its constructor takes (model_options)
    d_k: int | None = model_option(
        None, help="Projection width d_k of a learned head; default: the model's."
    )
    tmixer: bool = model_option(True, help="SA-CT's TMixer (ablation: --no-tmixer).")
    cpe: bool = model_option(True, help="SA-CT's CPE (ablation: --no-cpe).")
    # SA-CT deviations from the seed that make it train (docs/MODEL.md, "Training at the seed's
    # scale"); input_norm=False with distance="seed" is the paper formula (SACT.paper)
    input_norm: bool = model_option(
        True, help="SA-CT: LayerNorm on the input features (paper formula: --no-input-norm)."
    )
    distance: str = model_option(
        "sum", help="SA-CT's distance of frame sums (sum), means (mean) or the seed's."
    )
    iterations: int = option(10_000, help="Optimiser steps.")
    lr: float = option(1e-3, help="Peak learning rate.")
    optimizer: str = option("adamw", help="adamw, adam or sgd.")
    weight_decay: float = option(0.01, help="Weight decay.")
    warmup: int = option(100, help="Linear warm-up steps, then cosine decay to zero.")
    tasks_per_batch: int = option(4, help="Episodes per optimiser step.")
    val_every: int = option(500, help="Validate and checkpoint every N steps.")
    val_episodes: int = option(300, help="Fixed val episodes per validation.")
    batch_size: int = 32  # videos per forward when embedding val videos
    # None: runs/<model>-<feature set>-<time>
    out: str | None = option(None, help="Run directory; default runs/NAME.")
    seed: int = option(0, help="Seed of every random draw.")
    device: str = option("auto", help=DEVICE_HELP)
    precision: str = option(
        "auto",
        help=PRECISION_HELP,
    )
    step: str = option(
        "auto",
        help=f"How a step runs: {', '.join(STEPS)}; auto: eager on the CPU, compiled on CUDA "
        "(fewshot/step.py).",
    )
    resume: bool = option(
        False, flag="--resume", help="Continue the run in --out from its last checkpoint."
    )
    # GPU + host cache cap; None: memory shares (features.py)
    cache_gb: float | None = option(
        None,
        help="Cache at most this many GB of the split's features, on the GPU first, then in host "
        "memory; the rest is read from the store. Default: 75% of the GPU's free memory, then "
        "half of the host's available memory.",
    )
    log: str | None = option(
        None,
        help="tensorboard: also TensorBoard event files in the run (metrics.jsonl is always "
        "written).",
    )
    workers: int = 4  # loader threads: host memory and store reads ahead of the step
    prefetch: int = 4  # batches read ahead when not all on the device
    # stored views (docs/STORE.md) training draws from, one per video per episode; saved
    # resolved, as names
    views: str = option(
        "all",
        help="Stored views to draw one of per video per episode: all (those holding the whole "
        "train split) or names joined by commas, e.g. canonical.",
    )

    def model_options(self) -> dict[str, Any]:
        """The model options (fields declared with `model_option`) the kind's constructor takes,
        passed even at their default here, which need not be the model's; None leaves the
        model's default. An option set away from its default for a kind that does not take it
        is refused. Imports the kind's head (torch)."""
        takes = model_kind(self.model).options()
        options = {}
        for config_field, spec in declared_options(self):
            name, value = config_field.name, getattr(self, config_field.name)
            if not spec.model:
                continue
            if name in takes:
                if value is not None:
                    options[name] = value
            elif value != config_field.default:
                takers = [kind.name for kind in model_kinds() if name in kind.options()]
                raise TrainingError(
                    f"{option_name(self, name)} applies to {', '.join(takers)} only"
                )
        return options

    def check(self) -> None:
        if not is_model(self.model):
            raise TrainingError(f"--model must be {one_of(model_names())}, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.distance not in DISTANCES:
            raise TrainingError(f"--distance must be one of {', '.join(DISTANCES)}")
        if self.precision not in PRECISIONS:
            raise TrainingError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.step not in STEPS:
            raise TrainingError(f"--step must be one of {', '.join(STEPS)}, got {self.step!r}")
        for name in (
            "iterations", "tasks_per_batch", "val_every", "val_episodes", "batch_size", "workers",
            "prefetch",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise TrainingError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
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

            if not self.feats:
                raise TrainingError(
                    "missing --feats STORE (the feature store written by `sact extract`)"
                )
            if not is_url(self.feats) and not Path(self.feats).exists():
                raise TrainingError(f"no feature store at {self.feats}")
        self.model_options()  # last: it imports the model's head, and so torch


def read_train_config(path: Path) -> TrainConfig:
    """The TrainConfig a run saved in its config.json (keys of other sact versions ignored; a run
    saved before precision policies trained under the legacy one)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["train"]
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(
            **{"precision": LEGACY_PRECISION, **{k: v for k, v in saved.items() if k in known}}
        )
    except FileNotFoundError as error:
        raise TrainingError(f"{path} does not exist") from error
    except (OSError, UnicodeDecodeError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise TrainingError(f"cannot read {path} as a run's config: {error}") from error


def prepare_training(
    config: TrainConfig, *, rerun: Path | None = None, typed: Collection[str] = ()
) -> Checked[TrainConfig]:
    """The config a run trains, merged with the saved one it reruns or continues, and checked.

    The one place saved configs are merged in:
    - `rerun` (`sact train --config RUN/config.json`): that run's settings, with the fields named
      in `typed` (the options typed on the command line) taken from `config`. A new run, in a new
      run directory unless --out is typed, never a continuation (that is --resume).
    - `config.resume`: the settings saved in the run directory `config.out`, with where and how it
      runs (RUNTIME_FIELDS) taken from `config`.
    """
    if rerun is not None:
        overrides = {name: getattr(config, name) for name in typed}
        config = replace(read_train_config(rerun), **{"out": None, "resume": False, **overrides})
    if config.resume:
        if config.out is None:
            raise TrainingError("--resume needs --out, the run directory to continue")
        saved = Path(config.out) / CONFIG_FILE
        if not saved.exists():
            raise TrainingError(f"nothing to resume: {saved} does not exist")
        runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS}
        config = replace(read_train_config(saved), **runtime, out=config.out)
    return checked(config)


class EvaluationError(SactError):
    """An evaluation that cannot run as asked; the message is one line for the user."""


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation depends on; saved in the results JSON."""

    # with neither run nor ckpt: the latest run under runs_dir
    run: str | None = option(None, help="Run directory; default: the latest run under runs/.")
    # a checkpoint folder (or its checkpoint.json / model.safetensors)
    ckpt: str | None = option(None, help="A checkpoint folder instead of a run.")
    checkpoint: str = option(
        "best",
        help="Which checkpoint of a run: best (the best validated trained step), last, or "
        "untrained (step 0).",
    )
    feats: str | None = option(None, help="Feature store; default: the run's own.")
    feature_set: str | None = option(None, help="Feature set; default: the run's own.")
    split: str = option("test", help="Split part to score: train, val or test.")
    split_list: str | None = option(
        None, help="Split list name or folder; default: the run's split."
    )
    way: int = option(5, help="Classes per episode, N.")
    shots: tuple[int, ...] = option((1, 5), flag="--shot", help="Shots K (repeatable).")
    query: int = option(1, help="Queries per class, Q.")
    episodes: int = option(10_000, help="Episodes per shot setting.")
    seed: int = option(0, help="Seed of the episodes.")
    episodes_file: str | None = option(None, help="Episode file: read if it exists, else written.")
    compare: tuple[str, ...] = option(
        (), help="Another run scored on the same episodes (repeatable): paired Δ."
    )
    device: str = option("auto", help=DEVICE_HELP)
    precision: str = option(
        "auto",
        help=PRECISION_HELP,
    )
    batch_size: int = option(32, help="Videos per embedding forward.")
    # test-time augmentation over the stored views (docs/STORE.md)
    tta: bool = option(
        False,
        flag="--tta",
        help="Also score with logits averaged over every stored view (test-time augmentation), "
        "reported apart.",
    )
    workers: int = 4  # reader threads
    runs_dir: str = "runs"  # where "the latest run" is looked for
    out: str | None = option(
        None, help="Also write the results here (every run keeps its own: evaluations/)."
    )

    def check(self) -> None:
        """The options and the paths they name, checked before torch is imported."""
        if self.run and self.ckpt:
            raise EvaluationError("pass --run or --ckpt, not both")
        if self.checkpoint not in CHECKPOINTS:
            raise EvaluationError(
                f"--checkpoint must be {one_of(CHECKPOINTS)}, got {self.checkpoint!r}"
            )
        if self.split not in SPLIT_PARTS:
            raise EvaluationError(f"--split must be train, val or test, got {self.split!r}")
        if self.episodes < 1 or not self.shots:
            raise EvaluationError("need --episodes >= 1 and at least one --shot")
        if self.precision not in PRECISIONS:
            raise EvaluationError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
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


class ExplainError(SactError):
    """A figure that cannot be drawn as asked; the message is one line for the user."""


@dataclass(frozen=True)
class ExplainConfig:
    """What `sact explain` draws: a query video's attention onto a support video."""

    run: Path = option(help="A SA-CT run directory.", metavar="DIR")
    # video ids in the run's feature set
    query: str = option(help="Query video id (in the run's store).", metavar="VIDEO_ID")
    support: str = option(help="Support video id.", metavar="VIDEO_ID")
    # None: <run>/attention-<query>-<support>.png
    out: Path | None = option(None, help="PNG to write; default: in the run.")
    checkpoint: str = option("best", help="Which checkpoint: best, last or untrained.")
    patches: int = option(2, help=f"Query patches drawn per frame (1-{MOST_PATCHES}).")
    feats: str | None = option(None, help="Feature store; default: the run's.")  # None: the run's

    def check(self) -> None:
        if not 1 <= self.patches <= MOST_PATCHES:
            raise ExplainError(f"--patches must lie in 1..{MOST_PATCHES}, got {self.patches}")
