"""`sact train` and `sact evaluate` end to end through typer's runner, on a synthetic store."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from sact.cli import app
from sact.testing.stores import video_id

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def workdir(tmp_path, monkeypatch, synthetic_store):
    """A copy of the session's store, which records its split (as `sact extract --split` does),
    and of its split lists, in the current folder."""
    shutil.copytree(synthetic_store.location, tmp_path / "feats.zarr")
    shutil.copytree(synthetic_store.split, tmp_path / "split")
    monkeypatch.chdir(tmp_path)
    return tmp_path


TRAIN = ["train", "--feats", "feats.zarr", "--way", "3", "--shot", "2", "--query", "2"]
SMALL = ["--d-k", "16", "--iterations", "8", "--val-every", "4", "--val-episodes", "10"]


def test_train_then_evaluate_the_latest_run_with_no_arguments(workdir):
    trained = runner.invoke(app, [*TRAIN, *SMALL, "--lr", "0.003", "--device", "cpu", "--json"])
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout)
    run_dir = workdir / result["run_dir"]
    assert run_dir.parent == workdir / "runs" and result["steps"] == 8
    assert (run_dir / "checkpoints/best/model.safetensors").is_file()
    assert (run_dir / "training_curve.png").is_file()

    evaluated = runner.invoke(app, ["evaluate", "--way", "3", "--episodes", "20", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(evaluated.stdout)
    assert [s["shot"] for s in results["settings"]] == [1, 5]
    assert list(results["runs"]) == [result["run_dir"]]
    assert results["runs"][result["run_dir"]]["store"] == str(workdir / "feats.zarr")
    assert len(list((run_dir / "evaluations").glob("best-step*.json"))) == 1

    table = runner.invoke(app, ["evaluate", "--way", "3", "--shot", "1", "--episodes", "20"])
    assert table.exit_code == 0 and "5-way" not in table.stdout and "3-way 1-shot" in table.stdout


def test_resume_and_compare_through_the_command_line(workdir):
    base = [*TRAIN, *SMALL, "--device", "cpu"]
    assert runner.invoke(app, [*base, "--out", "runs/a"]).exit_code == 0
    again = runner.invoke(app, [*base, "--out", "runs/a"])
    assert again.exit_code == 2 and "continue it with --resume" in again.output
    resumed = runner.invoke(app, ["train", "--out", "runs/a", "--resume", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    proto = runner.invoke(
        app, [*TRAIN, "--model", "nearest-mean", "--out", "runs/p", "--device", "cpu"]
    )
    assert proto.exit_code == 0, proto.output
    compared = runner.invoke(
        app,
        ["evaluate", "--run", "runs/a", "--compare", "runs/p", "--way", "3", "--shot", "1",
         "--episodes", "20", "--episodes-file", "episodes.json", "--json"],
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    setting = json.loads(compared.stdout)["settings"][0]
    assert set(setting["paired_differences"]) == {"runs/p"}
    assert (workdir / "episodes.json").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train"], "missing --feats STORE"),
        (["train", "--feats", "missing.zarr"], "no feature store at missing.zarr"),
        (
            [*TRAIN, "--model", "bert"],
            "--model must be sact, protonet, nearest-mean, trx or trx-grid",
        ),
        ([*TRAIN, "--way", "9"], "9-way episodes need 9 classes"),
        (["train", "--out", "runs/none", "--resume"], "nothing to resume"),
        (["evaluate"], "no trained run under runs/"),
        (["evaluate", "--run", "runs/none"], "run directory runs/none does not exist"),
        (["evaluate", "--ckpt", "feats.zarr"], "no checkpoint at feats.zarr"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(workdir, arguments, message):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_compare_with_a_store_lacking_a_test_class_names_the_class_and_the_run(
    workdir, synthetic_store
):
    # run b's store holds the same videos, except that none of test class_029's could be read
    lost = [video_id("class_029", n) for n in range(synthetic_store.videos_per_class)]
    synthetic_store.write_like(workdir / "b.zarr", split="split", failed=lost)
    protonet = ["--model", "nearest-mean", "--device", "cpu"]
    assert runner.invoke(app, [*TRAIN, *protonet, "--out", "runs/a"]).exit_code == 0
    on_b = ["train", "--feats", "b.zarr", *TRAIN[3:], *protonet, "--out", "runs/b"]
    assert runner.invoke(app, on_b).exit_code == 0
    compared = runner.invoke(
        app,
        ["evaluate", "--run", "runs/a", "--compare", "runs/b", "--way", "5", "--shot", "1",
         "--episodes", "5"],
    )  # fmt: skip
    assert compared.exit_code == 2, compared.output
    assert "Traceback" not in compared.output
    assert not isinstance(compared.exception, Exception)  # an exit, not a crash
    assert "class_029" in compared.output and "runs/b" in compared.output


def test_training_at_an_odd_frame_count_names_the_command_line_flags(workdir):
    result = runner.invoke(app, [*TRAIN, *SMALL, "--frames", "3", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--no-tmixer" in result.output and "tmixer=False" not in result.output


def test_an_episodes_file_warns_about_each_option_it_overrides(workdir):
    assert runner.invoke(app, [*TRAIN, "--model", "nearest-mean", "--out", "runs/p"]).exit_code == 0
    evaluate = ["evaluate", "--run", "runs/p", "--way", "3", "--episodes-file", "episodes.json"]
    assert runner.invoke(app, [*evaluate, "--shot", "1", "--episodes", "20"]).exit_code == 0
    again = runner.invoke(app, [*evaluate, "--shot", "2", "--episodes", "30", "--seed", "4"])
    assert again.exit_code == 0, again.output
    warning = next(line for line in again.stderr.splitlines() if "ignored" in line)
    for option in ("--shot", "--episodes", "--seed", "--way"):
        assert option in warning
    assert "--run" not in warning


def test_train_ends_with_its_result_the_features_and_the_run_each_on_a_line(workdir):
    result = runner.invoke(app, [*TRAIN, *SMALL, "--device", "cpu", "--out", "runs/a"])
    assert result.exit_code == 0, result.output
    *_, trained, features, where = result.stderr.splitlines()
    assert re.fullmatch(r"8 steps; best val accuracy \d+\.\d\d% at step [48]", trained), trained
    assert features.startswith("train features, ") and "limits:" in features
    assert where == "run in runs/a"


def test_a_model_with_nothing_to_train_says_so(workdir):
    result = runner.invoke(app, [*TRAIN, "--model", "nearest-mean", "--out", "runs/p"])
    assert result.exit_code == 0, result.output
    assert "nothing to train" in result.stderr
    assert "0/0" not in result.stderr and "0 steps" not in result.stderr


def test_result_tables_are_not_cut_when_the_output_is_not_a_terminal(workdir):
    long_names = [
        "runs/nearest-mean-on-the-synthetic-store-a",
        "runs/nearest-mean-on-the-synthetic-store-b",
    ]
    for name in long_names:
        trained = runner.invoke(app, [*TRAIN, "--model", "nearest-mean", "--out", name])
        assert trained.exit_code == 0, trained.output
    compared = runner.invoke(
        app,
        ["evaluate", "--run", long_names[0], "--compare", long_names[1], "--way", "3",
         "--shot", "1", "--episodes", "10"],
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "nearest-mean (nearest-mean-on-the-synthetic-store-a)" in compared.stdout
    assert "Δ vs nearest-mean-on-the-synthetic-store-b" in compared.stdout
    assert "…" not in compared.stdout
