"""Which checkpoint is scored (fewshot/selection.py): never the untrained model unless asked for by
name, always named with its step, with a warning where it may be no better than untrained; runs
written by an older sact read with the same rule."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sact.cli import app
from sact.common.errors import SactError
from sact.fewshot import training as training_module
from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.config import EvalConfig
from sact.fewshot.evaluation import Evaluation, evaluate, results_table
from sact.fewshot.report import build_report, report_json, report_table
from sact.fewshot.selection import select_checkpoint
from sact.fewshot.training import TrainConfig, train
from tests.test_training import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VAL_EPISODES = 20
# The run: the untrained head scores highest on a small, noisy val split (46.7%), the
# trained steps a little lower (41.7-45.0%); validations at steps 0, 4, 8 and 12.
SCRIPTED_VAL = {0: 0.467, 4: 0.417, 8: 0.45, 12: 0.433}
SPREAD = 0.2  # per-episode accuracies +- this around the mean: the untrained CI is +-0.088


def scripted_accuracies(mean: float) -> np.ndarray:
    """(E,) per-episode val accuracies with the given mean and a spread a small split has."""
    return mean + SPREAD * np.resize([1.0, -1.0], VAL_EPISODES)


def run_config(store, out: Path, **changes) -> TrainConfig:
    """test_training's tiny run, one episode per step, validated on VAL_EPISODES episodes."""
    changes = {"tasks_per_batch": 1, "val_episodes": VAL_EPISODES, **changes}
    return tiny((store.location, store.split), out, **changes)


def train_scripted(store, out: Path, monkeypatch, scripted: dict[int, float], **changes) -> None:
    """A real run whose validations score `scripted[step]` (the weights train as usual)."""
    trainer_of_run: list[training_module.Trainer] = []
    original_init = training_module.Trainer.__init__

    def remembered(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        trainer_of_run.append(self)

    def scored(*args, **kwargs):
        return [scripted_accuracies(scripted[trainer_of_run[-1].step])]

    with monkeypatch.context() as patch:
        patch.setattr(training_module.Trainer, "__init__", remembered)
        patch.setattr(training_module, "score_episodes", scored)
        train(run_config(store, out, **changes))


def evaluation(run: Path, **changes) -> Evaluation:
    config = EvalConfig(run=str(run), way=3, shots=(1,), episodes=10, device="cpu")
    return evaluate(replace(config, **changes))


@pytest.fixture(scope="module")
def noisy_run(synthetic_store, tmp_path_factory):
    """The issue's run, trained once for the module; tests copy it before changing it."""
    folder = tmp_path_factory.mktemp("selection")
    with pytest.MonkeyPatch.context() as monkeypatch:
        train_scripted(synthetic_store, folder / "run", monkeypatch, SCRIPTED_VAL)
    return folder / "run"


@pytest.fixture
def run(noisy_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(noisy_run, copy)
    return copy


def test_the_untrained_model_is_kept_apart_and_never_best(run):
    untrained = read_checkpoint(run / "checkpoints/untrained")
    best = read_checkpoint(run / "checkpoints/best")
    assert untrained.step == 0 and untrained.val_accuracy == pytest.approx(0.467)
    assert untrained.val_ci95 == pytest.approx(1.96 * SPREAD / np.sqrt(VAL_EPISODES))
    assert best.step == 8 and best.val_accuracy == pytest.approx(0.45)  # the best trained step


def test_evaluate_scores_the_best_trained_step_names_it_and_warns(run):
    results = evaluation(run)
    scored = results.runs[str(run)]
    assert (scored.checkpoint_name, scored.step) == ("best", 8)
    (warning,) = results.warnings
    assert scored.warning == warning
    assert "within the 95% CI of the untrained model's 46.7% ± 8.8%" in warning
    assert "\n" not in warning
    header = results_table(results).columns[2].header
    assert "best, step 8" in str(header)
    record = json.loads(Path(results.records[str(run)]).read_text())
    assert (record["checkpoint"], record["step"]) == ("best", 8)

    untrained = evaluation(run, checkpoint="untrained").runs[str(run)]
    assert (untrained.checkpoint_name, untrained.step, untrained.warning) == (
        "untrained",
        0,
        None,
    )


def test_a_best_at_the_first_validation_is_warned_about(synthetic_store, tmp_path, monkeypatch):
    falling = {0: 0.3, 4: 0.9, 8: 0.6, 12: 0.5}  # far above untrained, then never better
    train_scripted(synthetic_store, tmp_path / "run", monkeypatch, falling)
    selected = select_checkpoint(tmp_path / "run", "best")
    assert selected.checkpoint.step == 4
    assert selected.warning is not None and "CI" not in selected.warning
    assert "first validation after step 0, and none of the 2 later ones (to step 12)" in (
        selected.warning
    )
    rising = {0: 0.3, 4: 0.6, 8: 0.7, 12: 0.9}
    train_scripted(synthetic_store, tmp_path / "good", monkeypatch, rising)
    assert select_checkpoint(tmp_path / "good", "best").warning is None


def test_report_names_the_scored_checkpoint(run):
    evaluation(run)
    report = build_report([run])
    data = report_json(report)
    assert data["rows"][0]["checkpoints"] == {str(run.resolve()): ["best, step 8"]}
    assert data["warnings"] == []
    table = report_table(report)
    assert [column.header for column in table.columns][:5] == [
        "model", "settings", "feature set", "checkpoint", "seeds",
    ]  # fmt: skip
    assert list(table.columns[3].cells) == ["best, step 8"]


def as_written_by_an_older_sact(run: Path) -> None:
    """The layout before `untrained/`: the step-0 model kept as `best`, no CI recorded."""
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "best")
    (checkpoints / "untrained").rename(checkpoints / "best")
    for name in ("best", "last"):
        description = checkpoints / name / "checkpoint.json"
        data = json.loads(description.read_text())
        del data["val_ci95"]
        description.write_text(json.dumps(data))


def test_an_older_runs_untrained_best_is_not_scored_as_best(run):
    as_written_by_an_older_sact(run)
    results = evaluation(run)
    scored = results.runs[str(run)]
    assert (scored.checkpoint_name, scored.step) == ("last", 12)
    assert "trained by an older sact, which kept its untrained step-0 model (val 46.7%)" in (
        scored.warning or ""
    )
    assert "not above the untrained model's 46.7%" in (scored.warning or "")
    untrained = evaluation(run, checkpoint="untrained").runs[str(run)]
    assert (untrained.checkpoint_name, untrained.step) == ("untrained", 0)


def test_report_prefers_a_trained_record_to_an_older_best_step0_one(run):
    as_written_by_an_older_sact(run)
    evaluation(run, checkpoint="untrained")  # scores checkpoints/best, at step 0
    (step0,) = (run / "evaluations").glob("best-step0-*.json")
    data = report_json(build_report([run]))
    assert data["rows"][0]["checkpoints"] == {str(run.resolve()): ["untrained, step 0"]}
    (warning,) = data["warnings"]
    assert "scored as its untrained step-0 model" in warning and "sact evaluate --run" in warning

    evaluation(run)  # the rule: last, step 12
    data = report_json(build_report([run]))
    assert data["rows"][0]["checkpoints"] == {str(run.resolve()): ["last, step 12"]}
    assert data["warnings"] == [] and step0.exists()


def test_a_run_without_a_trained_validation_says_what_to_do(run):
    shutil.rmtree(run / "checkpoints/best")
    with pytest.raises(SactError, match=r"no validated trained checkpoint yet .*--resume"):
        select_checkpoint(run, "best")


def test_the_command_line_warns_in_one_line_and_names_the_checkpoint(run):
    result = CliRunner().invoke(
        app,
        ["evaluate", "--run", str(run), "--way", "3", "--shot", "1", "--episodes", "10",
         "--device", "cpu", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "within the 95% CI" in warnings[0]
    assert json.loads(result.stdout)["runs"][str(run)]["step"] == 8
