"""Every evaluation of a run, kept: `<run>/evaluations/<key>.json`, one per (checkpoint, episodes).

`sact evaluate` writes one record into the folder of every run it scores. A record holds the run's
per-episode results, so `sact report` can compare runs evaluated separately, as long as they were
scored on identical episodes (the same `episodes_digest`). The key names the checkpoint, its step
and a digest of its weights, the episodes and the precision policy (fewshot/precision.py) where
it changes the results: evaluating the same checkpoint on the same episodes
again rewrites the same file with the same numbers (keeping the runs it was compared with),
anything else adds a file and loses none.

A record (format 1):

    {"format": 1, "created": ISO time, "run": run directory, "model": kind, "model_config": {...},
     "checkpoint": "best" | "last" | "untrained" | folder name, "step": int,
     "weights": sha256 of the weights, "feature_set": name, "store": location, "split": "test",
     "precision": policy scored under,
     "settings": [{"way", "shot", "query", "episodes", "episodes_digest", "accuracy", "ci95",
                   "correct": [correct queries of each episode]}],
     "compared": {run: [{"way", "shot", "difference", "ci95"}]}   # paired, when others were scored
     "config": the EvalConfig}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sact.common.errors import SactError
from sact.common.files import read_versioned_json, write_text_atomic
from sact.fewshot.checkpoints import WEIGHTS, Checkpoint

RECORD_FORMAT = 1
RECORDS_FOLDER = "evaluations"
DIGEST_CHARS = 12  # of a sha256 in a file name: collisions would need ~10^7 evaluations of a run


class RecordError(SactError):
    """An evaluation record that cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class SettingScores:
    """One run's results on one set of episodes."""

    way: int
    shot: int
    query: int
    episodes_digest: str
    correct: np.ndarray  # (E,) correctly classified queries of each episode

    @property
    def accuracies(self) -> np.ndarray:
        return self.correct / (self.way * self.query)  # (E,)


@dataclass(frozen=True)
class Record:
    path: Path
    data: dict[str, Any]
    settings: list[SettingScores]

    @property
    def created(self) -> str:
        return str(self.data.get("created", ""))


def weights_digest(checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256()
    with (checkpoint.folder / WEIGHTS).open("rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_name(
    checkpoint: Checkpoint, weights: str, episode_digests: list[str], precision: str | None = None
) -> str:
    """The record's file name. `precision`: the policy it was scored under, where it is not the
    one sact scored with before it had policies (those records keep their names)."""
    parts = [weights, *episode_digests, *([precision] if precision is not None else [])]
    key = hashlib.sha256(" ".join(parts).encode()).hexdigest()
    return f"{checkpoint.folder.name}-step{checkpoint.step}-{key[:DIGEST_CHARS]}.json"


def write_record(run_dir: Path, name: str, data: dict[str, Any]) -> Path:
    """Write (or rewrite) a record; the paired differences an earlier evaluation of the same
    checkpoint on the same episodes found against other runs are kept beside the new ones."""
    path = run_dir / RECORDS_FOLDER / name
    if path.is_file():
        try:
            earlier = read_record(path).data.get("compared", {})
        except RecordError:
            earlier = {}  # a damaged record of the same evaluation: this one replaces it
        data = {**data, "compared": {**earlier, **data.get("compared", {})}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"format": RECORD_FORMAT, **data}) + "\n")
    return path


def _setting(raw: Any, where: str) -> SettingScores:
    try:
        shape = tuple(int(raw[key]) for key in ("way", "shot", "query"))
        correct = np.asarray(raw["correct"], dtype=np.int64)
        digest = str(raw["episodes_digest"])
    except (KeyError, TypeError, ValueError) as error:
        raise RecordError(f"{where}: malformed setting ({error})") from error
    way, shot, query = shape
    if min(shape) < 1 or correct.ndim != 1 or len(correct) == 0:
        raise RecordError(f"{where}: malformed setting")
    if correct.min() < 0 or correct.max() > way * query:
        raise RecordError(f"{where}: correct counts outside 0..{way * query}")
    return SettingScores(way, shot, query, digest, correct)


def read_record(path: Path) -> Record:
    data = read_versioned_json(
        path, what="evaluation record", version=RECORD_FORMAT, error=RecordError
    )
    settings = data.get("settings")
    if not isinstance(settings, list) or not settings:
        raise RecordError(f"{path} holds no settings")
    return Record(path, data, [_setting(raw, str(path)) for raw in settings])


def run_records(run_dir: Path) -> list[Record]:
    """A run's evaluation records, oldest first."""
    folder = run_dir / RECORDS_FOLDER
    records = [read_record(path) for path in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda record: record.created)
