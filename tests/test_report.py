"""`sact report`: seeds grouped, paired differences on identical episodes, on real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sact.cli import app
from sact.fewshot.evaluation import EvalConfig, evaluate
from sact.fewshot.records import read_record
from sact.fewshot.report import build_report, report_json, report_markdown
from sact.fewshot.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_store):
    """SA-CT twice (seeds 0 and 1), the nearest mean once, each evaluated on one episode file."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("report")
    common = {
        "feats": synthetic_store.location,
        "split": synthetic_store.split,
        "way": 3,
        "shot": 2,
        "query": 2,
        "frames": 4,
        "val_episodes": 10,
        "device": "cpu",
    }
    learned = {"d_k": 16, "iterations": 20, "lr": 3e-3, "warmup": 5, "val_every": 10}
    paths = {
        "sact-0": folder / "runs/sact/seed0",
        "sact-1": folder / "runs/sact/seed1",
        "floor": folder / "runs/floor",
    }
    train(TrainConfig(**common, **learned, seed=0, out=str(paths["sact-0"])))
    # seed 1 in the batched step mode: how a step runs is not a setting, the runs are seeds of one
    train(TrainConfig(**common, **learned, seed=1, step="batched", out=str(paths["sact-1"])))
    train(TrainConfig(**common, model="nearest-mean", out=str(paths["floor"])))
    episodes = folder / "episodes.json"
    results = {
        name: evaluate(
            EvalConfig(
                run=str(path),
                way=3,
                shots=(1, 2),
                episodes=40,
                device="cpu",
                episodes_file=str(episodes),
            )
        )
        for name, path in paths.items()
    }
    return folder, paths, results


def test_seeds_are_one_configuration_and_differences_are_paired(runs):
    folder, paths, results = runs
    report = build_report([paths["sact-0"], paths["sact-1"], paths["floor"]])
    data = report_json(report)
    sact, floor = data["rows"]
    assert (sact["model"], floor["model"]) == ("sact", "nearest-mean")
    assert sact["seeds"] == [0, 1] and floor["seeds"] == [0]
    assert [s["shot"] for s in data["settings"]] == [1, 2]
    for number, setting in enumerate(data["settings"]):
        per_seed = [
            results[name].settings[number].runs[str(paths[name])].accuracy
            for name in ("sact-0", "sact-1")
        ]
        score = sact["scores"][number]
        assert score["seed_accuracies"] == pytest.approx(per_seed)
        assert score["accuracy"] == pytest.approx(np.mean(per_seed))
        assert score["difference"] == 0 and score["difference_ci95"] == 0  # the reference
        # floor − SA-CT, episode by episode on the seed-averaged accuracies
        records = [read_record(path / "evaluations" / name) for path in paths.values()
                   for name in [p.name for p in (path / "evaluations").iterdir()]]  # fmt: skip
        by_run = {record.data["run"]: record.settings[number] for record in records}
        mine = {name: by_run[str(paths[name].resolve())].accuracies for name in paths}
        difference = mine["floor"] - (mine["sact-0"] + mine["sact-1"]) / 2
        assert floor["scores"][number]["difference"] == pytest.approx(difference.mean())
        assert setting["episodes"] == 40
    # the folder gives the same report (runs found in name order: floor, then sact)
    again = report_json(build_report([folder / "runs"]))
    assert [row["model"] for row in again["rows"]] == ["nearest-mean", "sact"]
    assert again["rows"][1]["scores"][0]["accuracy"] == pytest.approx(sact["scores"][0]["accuracy"])
    # what differs between the configurations is named, what they share is not
    assert "lr" in data["differing"] and "way" not in data["differing"]
    markdown = report_markdown(report)
    assert markdown.count("\n") == 4 and "| sact |" in markdown and "| nearest-mean |" in markdown


def test_the_command_prints_rich_markdown_and_json(runs, tmp_path):
    folder, _, _ = runs
    result = CliRunner().invoke(
        app, ["report", str(folder / "runs"), "--markdown", str(tmp_path / "t.md"), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["model"] for row in data["rows"]] == ["nearest-mean", "sact"]
    assert "seed range" in result.stderr and (tmp_path / "t.md").read_text().startswith("| model")


def test_runs_that_share_no_episodes_or_no_evaluation_are_one_line_errors(
    runs, tmp_path, synthetic_store
):
    _, paths, _ = runs
    common = {"feats": synthetic_store.location, "split": synthetic_store.split, "frames": 4,
              "way": 3, "shot": 2, "query": 2, "val_episodes": 10, "device": "cpu"}  # fmt: skip
    train(TrainConfig(**common, model="nearest-mean", out=str(tmp_path / "lonely")))
    train(TrainConfig(**common, model="nearest-mean", out=str(tmp_path / "elsewhere")))
    evaluate(EvalConfig(run=str(tmp_path / "elsewhere"), way=3, shots=(1,), episodes=5, seed=9,
                        device="cpu"))  # fmt: skip
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "nothing")], "neither a run directory nor a folder of runs"),
        ([str(tmp_path / "empty")], "no runs"),
        ([str(tmp_path / "lonely")], "has no evaluation; run `sact evaluate --run"),
        ([str(paths["sact-0"]), str(tmp_path / "elsewhere")], "share no evaluated episodes"),
    ]
    for arguments, message in cases:
        result = CliRunner().invoke(app, ["report", *arguments])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
