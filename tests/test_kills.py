"""Kills: `sact extract` and `sact train` SIGKILLed at seeded moments (tests.faults.scenarios, the
quick part of python -m tests.faults.reliability), and what those kills found."""

from __future__ import annotations

from pathlib import Path

import pytest

from sact.fewshot.checkpoints import read_checkpoint, save_checkpoint
from sact.fewshot.kinds import create_model
from tests.faults.scenarios import RESUMED_EQUAL, kill_extraction, kill_one_writer, kill_training

MODEL_CONFIG = {"dim": 8, "frames": 2, "grid": [1, 1], "d_k": 4}


def description(step: int) -> dict:
    return {
        "model": "sact", "model_config": MODEL_CONFIG, "feature_set": "f", "store": "s",
        "split": None, "step": step, "val_accuracy": 0.5,
    }  # fmt: skip


def test_a_kill_in_the_checkpoint_after_one_between_renames_keeps_the_saved_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by kill_training_twice: the first kill leaves only last.previous; the resumed run's
    # next save deleted it before its own checkpoint was in place, and a second kill there left
    # no checkpoint at all (the run then restarted from step 0).
    model = create_model("sact", **MODEL_CONFIG)
    last = tmp_path / "checkpoints/last"
    save_checkpoint(last, model, description=description(4))
    last.rename(last.with_name("last.previous"))  # killed between the renames of step 8's save
    original_rename = Path.rename

    def killed_before_the_new_checkpoint_is_in_place(self: Path, target):
        if Path(target) == last:
            raise KeyboardInterrupt  # as SIGKILL would, nothing after this happens
        return original_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_checkpoint_is_in_place)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(last, model, description=description(8))
    monkeypatch.undo()
    assert read_checkpoint(last).step == 4  # still there, found as last.previous
    save_checkpoint(last, model, description=description(8))
    assert read_checkpoint(last).step == 8
    assert not last.with_name("last.previous").exists()
    assert not last.with_name("last.partial").exists()


@pytest.mark.slow
def test_extraction_killed_during_a_claim_and_a_shard_write_resumes_equal(tmp_path: Path) -> None:
    injections = kill_extraction(tmp_path, kills=2, seed=0, good_videos=4)
    assert {i.moment.split(":")[0] for i in injections} == {
        "during a claim",
        "during a features shard write",
    }
    assert all(i.outcome == RESUMED_EQUAL and i.lost == 0 for i in injections), injections


@pytest.mark.slow
def test_training_killed_mid_checkpoint_resumes_bit_for_bit(tmp_path: Path) -> None:
    (injection,) = kill_training(tmp_path, kills=1, seed=0)
    assert injection.moment.startswith("mid-checkpoint: before op")
    assert injection.outcome == RESUMED_EQUAL and injection.lost == 0, injection


@pytest.mark.slow
def test_one_of_two_concurrent_writers_killed_loses_nothing(tmp_path: Path) -> None:
    (injection,) = kill_one_writer(tmp_path, kills=1, seed=0, good_videos=4)
    assert injection.outcome == RESUMED_EQUAL and injection.lost == 0, injection
