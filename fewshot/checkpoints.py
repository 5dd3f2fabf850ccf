"""Checkpoints: safetensors weights, a JSON description, and (for `last`) the state to resume.

A run directory holds ``checkpoints/untrained/`` (step 0), ``checkpoints/best/`` and
``checkpoints/last/`` (which of them is scored: fewshot/selection.py), each with

    model.safetensors   the model's weights
    checkpoint.json     model kind and config, feature set, store, split, step, val accuracy and
                        its 95% CI (None at a step that was not validated: Ctrl-C's)
    resume.pt           (last only) optimiser and grad-scaler state, torch RNG state
    resume.json         (last only) step, numpy Generator state, best accuracy so far

Nothing here unpickles code: `resume.pt` holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``. A checkpoint is written into a temporary folder and swapped in
by renames, so a run killed while saving keeps its previous checkpoint.

Every command that reads a run goes from the run directory to its checkpoints with the rule of
fewshot/selection.py and back with `run_dir_of` (the latest run is `latest_run` of
fewshot/config.py, which the command line asks before it imports torch), and asks
`check_compatible` whether the checkpoint's model reads a feature set.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sact.common.errors import SactError
from sact.common.files import read_versioned_json
from sact.common.tensor_files import load_tensors
from sact.fewshot.heads import FewShotHead
from sact.fewshot.kinds import create_model, is_model, model_names
from sact.store.backends import FeatureSet

CHECKPOINT_FORMAT = 1
WEIGHTS = "model.safetensors"
DESCRIPTION = "checkpoint.json"
RESUME_TENSORS = "resume.pt"
RESUME_JSON = "resume.json"


class CheckpointError(SactError):
    """A checkpoint that cannot be read or used; the message is one line for the user."""


@dataclass(frozen=True)
class Checkpoint:
    """What `checkpoint.json` says, plus the folder it came from."""

    folder: Path
    model: str
    model_config: dict[str, Any]
    feature_set: str
    store: str
    split: str | None
    step: int
    val_accuracy: float | None
    val_ci95: float | None  # None: not validated, or written before the CI was recorded

    def build(self) -> FewShotHead:
        """The model with its weights, on the CPU, in eval mode."""
        model = build_model(self.model, self.model_config)
        try:
            weights = load_file(self.folder / WEIGHTS)
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"cannot read {self.folder / WEIGHTS}: {error}") from error
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(
                f"{self.folder / WEIGHTS} does not fit the model: {first}"
            ) from error
        return model.eval()


def build_model(kind: str, config: dict[str, Any]) -> FewShotHead:
    if not is_model(kind):
        raise CheckpointError(f"unknown model kind {kind!r}; known: {', '.join(model_names())}")
    try:
        return create_model(kind, **config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot build a {kind} model from {config}: {error}") from error


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def save_checkpoint(
    folder: Path,
    model: FewShotHead,
    *,
    description: dict[str, Any],
    resume_tensors: dict[str, Any] | None = None,
    resume_json: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint folder atomically: into `<folder>.partial`, then swapped in by renames."""
    partial = folder.with_name(folder.name + ".partial")
    previous = folder.with_name(folder.name + ".previous")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weights = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    # Serialized here and written by Python, so a full disk is an OSError naming its cause (the
    # libraries' own writers raise their own types), and the half-written folder goes.
    files = {WEIGHTS: save(weights, metadata={"format": str(CHECKPOINT_FORMAT)})}
    files[DESCRIPTION] = _json_bytes({"format": CHECKPOINT_FORMAT, **description})
    if resume_tensors is not None:
        buffer = io.BytesIO()
        torch.save(resume_tensors, buffer)
        files[RESUME_TENSORS] = buffer.getvalue()
    if resume_json is not None:
        files[RESUME_JSON] = _json_bytes(resume_json)
    try:
        for name, data in files.items():
            (partial / name).write_bytes(data)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)  # older than `folder`: left by a kill
        folder.rename(previous)
    # Without `folder`, `previous` is the only checkpoint (a kill fell between the renames): it
    # goes only once the new one is in place.
    partial.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def checkpoint_folder(folder: Path) -> Path:
    """The folder itself, or the previous one when a kill fell between the two renames."""
    previous = folder.with_name(folder.name + ".previous")
    if not folder.exists() and previous.exists():
        return previous
    return folder


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint from its folder, its checkpoint.json or its model.safetensors."""
    folder = path.parent if path.is_file() else checkpoint_folder(path)
    description = folder / DESCRIPTION
    if not description.exists():
        raise CheckpointError(f"no checkpoint at {path} ({DESCRIPTION} missing)")
    data = read_versioned_json(
        description, what="checkpoint", version=CHECKPOINT_FORMAT, error=CheckpointError
    )
    try:
        return Checkpoint(
            folder=folder,
            model=str(data["model"]),
            model_config=dict(data["model_config"]),
            feature_set=str(data["feature_set"]),
            store=str(data["store"]),
            split=None if data.get("split") is None else str(data["split"]),
            step=int(data["step"]),
            val_accuracy=data.get("val_accuracy"),
            val_ci95=data.get("val_ci95"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{description} is incomplete: {error}") from error


def run_dir_of(checkpoint: Checkpoint) -> Path:
    """The run a checkpoint belongs to (<run>/checkpoints/<name>), else its own folder."""
    parent = checkpoint.folder.parent
    return parent.parent if parent.name == "checkpoints" else checkpoint.folder


def check_compatible(checkpoint: Checkpoint, feature_set: FeatureSet) -> None:
    """The model must read the feature set's D and grid, and at most its number of frames."""
    config = checkpoint.model_config
    trained = (config.get("dim"), tuple(config.get("grid") or ()), config.get("frames"))
    stored = (feature_set.dim, tuple(feature_set.grid), feature_set.frames)
    frames = trained[2]
    if trained[:2] != stored[:2] or not isinstance(frames, int) or frames > stored[2]:
        raise CheckpointError(
            f"checkpoint {checkpoint.folder} expects D={trained[0]}, grid {trained[1]}, "
            f"T={frames}; feature set {feature_set.name} has D={stored[0]}, grid {stored[1]}, "
            f"T={stored[2]}"
        )


def read_resume_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, json) of a `last` checkpoint; tensors loaded with weights_only=True (a pickled
    object in resume.pt is refused in one line)."""
    folder = checkpoint_folder(folder)
    try:
        tensors = load_tensors(folder / RESUME_TENSORS)
        state = json.loads((folder / RESUME_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"nothing to resume in {folder}: {error.filename} missing") from error
    except (OSError, RuntimeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read the resume state in {folder}: {error}") from error
    return tensors, state
