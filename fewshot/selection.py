"""Which checkpoint of a run is scored: the rule `sact evaluate`, `sact explain` and `sact report`
share.

A run keeps up to three checkpoints (fewshot/training.py), in `<run>/checkpoints/`:

    untrained/  the model at step 0, validated before its first step (the curve's first point)
    best/       the best validation among the trained steps (> 0)
    last/       the latest step, with the state to resume (also a step Ctrl-C stopped at)

`best`, the default, is never the untrained model: on a small, noisy val split the untrained head
can score highest, and a comparison against a head that was never trained looks like any other
in a table. The untrained model is scored only when asked for by name (`--checkpoint untrained`,
e.g. as a floor). A model with nothing to train (the nearest mean) is complete at step 0, so its
step-0 checkpoint is its `best`.

A trained checkpoint comes with a one-line warning when it may be no better than the untrained
model:
- its val accuracy is not above the untrained model's upper 95% CI bound on the same val episodes
  (for a run written before that CI was recorded: not above the untrained accuracy itself);
- it is `best` and is the first validation after step 0 while later validations exist: none of
  them did better (over-fitting from the first steps, or a val split too small to tell).

Runs written by an older sact kept the step-0 model as `best` when no later validation beat it
(their evaluation records are named `best-step0-*.json`). The rule applies to them as they are:
such a `best` is their untrained model, and `best` falls back to `last`, the only trained
checkpoint they kept, with a warning saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sact.common.errors import SactError
from sact.fewshot.checkpoints import (
    Checkpoint,
    CheckpointError,
    build_model,
    checkpoint_folder,
    read_checkpoint,
    run_dir_of,
)
from sact.fewshot.config import CHECKPOINTS, CONFIG_FILE, TrainConfig, read_train_config
from sact.fewshot.kinds import one_of

BEST, LAST, UNTRAINED = CHECKPOINTS
CHECKPOINTS_FOLDER = "checkpoints"


@dataclass(frozen=True)
class Selected:
    """The checkpoint scored, the name it was selected by, and a warning about it (or None)."""

    checkpoint: Checkpoint
    name: str  # best, last, untrained, or the folder's name for a folder given by path
    warning: str | None

    @property
    def label(self) -> str:
        """What tables print: "best, step 400"."""
        return f"{self.name}, step {self.checkpoint.step}"

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint_name": self.name,
            "step": self.checkpoint.step,
            "val_accuracy": self.checkpoint.val_accuracy,
            "warning": self.warning,
        }


@cache
def _trainable(model: str, model_config_json: str) -> bool:
    head = build_model(model, json.loads(model_config_json))
    return any(parameter.requires_grad for parameter in head.parameters())


def is_untrained(model: str, model_config: dict[str, Any], step: int) -> bool:
    """Whether a checkpoint (or an evaluation record) of `model` at `step` was never trained: step
    0 of a model with parameters to train."""
    return step == 0 and _trainable(model, json.dumps(model_config, sort_keys=True))


def _kept(run: Path, name: str) -> Checkpoint | None:
    folder = checkpoint_folder(run / CHECKPOINTS_FOLDER / name)
    return read_checkpoint(folder) if folder.exists() else None


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _train_config(run: Path) -> TrainConfig | None:
    try:
        return read_train_config(run / CONFIG_FILE)
    except SactError:  # a checkpoint folder outside a run, or a config of another version
        return None


def validated_steps(config: TrainConfig, last_step: int) -> list[int]:
    """The steps after step 0 a run validated at, up to `last_step`: every `val_every` steps and
    the final one."""
    steps = list(range(config.val_every, last_step + 1, config.val_every))
    if last_step >= config.iterations and config.iterations not in steps:
        steps.append(config.iterations)
    return steps


@dataclass(frozen=True)
class RunCheckpoints:
    """A run's checkpoints as the rule sees them: an older sact's step-0 `best` is `untrained`."""

    run: Path
    untrained: Checkpoint | None
    best: Checkpoint | None
    last: Checkpoint | None
    older: bool  # written by an older sact, whose `best` was its untrained model

    @classmethod
    def read(cls, run: Path) -> RunCheckpoints:
        untrained, best, last = (_kept(run, name) for name in (UNTRAINED, BEST, LAST))
        older = (
            untrained is None
            and best is not None
            and is_untrained(best.model, best.model_config, best.step)
        )
        if older:
            untrained, best = best, None
        return cls(run, untrained, best, last, older)

    def warning(self, checkpoint: Checkpoint, name: str) -> str | None:
        """Why `checkpoint`, selected as `name`, may be no better than the untrained model."""
        if is_untrained(checkpoint.model, checkpoint.model_config, checkpoint.step):
            if name == UNTRAINED:
                return None
            return f"{name} checkpoint of {self.run} is its untrained model (step 0)"
        reasons = []
        untrained, accuracy = self.untrained, checkpoint.val_accuracy
        if untrained is not None and untrained.val_accuracy is not None and accuracy is not None:
            floor = untrained.val_accuracy
            if untrained.val_ci95 is not None and accuracy <= floor + untrained.val_ci95:
                reasons.append(
                    f"its val accuracy {_percent(accuracy)} is within the 95% CI of the untrained "
                    f"model's {_percent(floor)} ± {_percent(untrained.val_ci95)}"
                )
            elif untrained.val_ci95 is None and accuracy <= floor:
                reasons.append(
                    f"its val accuracy {_percent(accuracy)} is not above the untrained model's "
                    f"{_percent(floor)}"
                )
        config = _train_config(self.run)
        if name == BEST and config is not None and self.last is not None:
            steps = validated_steps(config, self.last.step)
            if steps and checkpoint.step == steps[0] and len(steps) > 1:
                reasons.append(
                    f"it is the first validation after step 0, and none of the {len(steps) - 1} "
                    f"later ones (to step {steps[-1]}) did better"
                )
        if not reasons:
            return None
        return (
            f"{name} checkpoint of {self.run} (step {checkpoint.step}) may be no better than "
            f"untrained: {'; '.join(reasons)} (--checkpoint untrained scores the untrained model)"
        )

    def select(self, name: str) -> Selected:
        if name == UNTRAINED:
            if self.untrained is None:
                raise CheckpointError(f"{self.run} kept no untrained (step-0) checkpoint")
            return Selected(self.untrained, UNTRAINED, None)
        if name == LAST:
            if self.last is None:
                raise CheckpointError(f"no checkpoint in {self.run} (checkpoints/last missing)")
            return Selected(self.last, LAST, self.warning(self.last, LAST))
        if self.best is not None:
            return Selected(self.best, BEST, self.warning(self.best, BEST))
        if self.older and self.untrained is not None and self.last is not None and self.last.step:
            untrained_accuracy = self.untrained.val_accuracy
            said = "" if untrained_accuracy is None else f" (val {_percent(untrained_accuracy)})"
            fallback = (
                f"{self.run} was trained by an older sact, which kept its untrained step-0 model"
                f"{said} as best: scoring last (step {self.last.step}), the only trained "
                "checkpoint it kept"
            )
            later = self.warning(self.last, LAST)
            return Selected(self.last, LAST, fallback if later is None else f"{fallback}; {later}")
        if self.last is None and self.untrained is None:
            raise CheckpointError(f"no checkpoint in {self.run} (checkpoints/ is empty)")
        at = "" if self.last is None else f" (last is at step {self.last.step})"
        raise CheckpointError(
            f"{self.run} has no validated trained checkpoint yet{at}: continue it with "
            f"sact train --out {self.run} --resume, or pass --checkpoint last or "
            "--checkpoint untrained"
        )


def select_checkpoint(run: Path, name: str) -> Selected:
    """The checkpoint of `run` selected by `name` (best, last or untrained), by the rule above."""
    if name not in CHECKPOINTS:
        raise CheckpointError(f"--checkpoint must be {one_of(CHECKPOINTS)}, got {name!r}")
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist")
    return RunCheckpoints.read(run).select(name)


def select_folder(path: Path) -> Selected:
    """A checkpoint given by its folder (or a file in it): scored as given, with the warning the
    rule gives it when it lies in a run."""
    checkpoint = read_checkpoint(path)
    run = run_dir_of(checkpoint)
    name = checkpoint.folder.name.removesuffix(".previous")
    if run == checkpoint.folder:  # a folder outside a run: nothing to compare it with
        untrained = is_untrained(checkpoint.model, checkpoint.model_config, checkpoint.step)
        warning = f"{checkpoint.folder} is an untrained model (step 0)" if untrained else None
        return Selected(checkpoint, name, warning)
    return Selected(checkpoint, name, RunCheckpoints.read(run).warning(checkpoint, name))
