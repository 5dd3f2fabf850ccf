"""Each option declared once (sact.common.options): a config field carries its name, type, default
and help, the command line is built from the fields, a model's options are read from its
constructor, and a config is checked once on its way to a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from sact.cli import app
from sact.common.options import declared_options
from sact.demo.config import DemoConfig
from sact.extract.config import ExtractConfig
from sact.fewshot.config import EvalConfig, ExplainConfig, TrainConfig

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
# each command's config, and the options a command has besides its config's
CONFIGS = {
    "extract": (ExtractConfig, {"json_out"}),
    "train": (TrainConfig, {"rerun", "json_out"}),
    "evaluate": (EvalConfig, {"json_out"}),
    "demo": (DemoConfig, {"json_out"}),
    "explain": (ExplainConfig, set()),
}

# A new model option in the two edits it takes, as a user's code makes them: (1) a head whose
# constructor takes the option, (2) the option, with its help, declared once as a TrainConfig
# field (a subclass put in TrainConfig's place stands for the field added to fewshot/config.py).
# The command line, config.json and the rerun from it then carry it with no other change.
TWO_EDITS = """
import json, sys
from dataclasses import dataclass

from typer.testing import CliRunner

import sact.fewshot.config
from sact.common.options import model_option
from sact.fewshot.baselines import ProtoNet
from sact.fewshot.kinds import register_model


class ScaledProtoNet(ProtoNet):  # edit 1: the constructor takes `temperature`
    def __init__(self, *, dim, frames, grid, d_k=1152, temperature: float = 1.0):
        super().__init__(dim=dim, frames=frames, grid=grid, d_k=d_k)
        self.temperature = temperature

    def config(self):
        return {**super().config(), "temperature": self.temperature}

    def match(self, support, support_labels, query, *, way=None):
        return super().match(support, support_labels, query, way=way) / self.temperature


@dataclass(frozen=True)
class TrainConfig(sact.fewshot.config.TrainConfig):  # edit 2: the option, once, with its help
    temperature: float = model_option(1.0, help="Divide the logits by this temperature.")


sact.fewshot.config.TrainConfig = TrainConfig
register_model("scaled", display_name="scaled ProtoNet", head="__main__:ScaledProtoNet")

from sact.cli import app  # built from the fields as they are now

outputs = [CliRunner().invoke(app, arguments).output for arguments in json.loads(sys.argv[1])]
print(json.dumps(outputs))
"""


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_of_a_command_is_a_field_of_its_config(command):
    config, own = CONFIGS[command]
    options = {param.name for param in COMMANDS[command].params}
    assert options - own == {field.name for field, _ in declared_options(config)}


def test_a_new_model_option_is_two_edits(synthetic_store, tmp_path: Path):
    run, again = tmp_path / "run", tmp_path / "again"
    train = ["train", "--feats", synthetic_store.location, "--model", "scaled", "--way", "3"]
    train += ["--shot", "2", "--query", "1", "--d-k", "8", "--iterations", "2"]
    train += ["--val-every", "2", "--val-episodes", "3", "--device", "cpu"]
    invocations = [
        ["train", "--help"],
        [*train, "--temperature", "0.5", "--out", str(run)],
        ["train", "--config", str(run / "config.json"), "--out", str(again), "--seed", "1"],
        [*train[:-4], "--model", "sact", "--temperature", "0.5"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", TWO_EDITS, json.dumps(invocations)],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    helped, trained, rerun, refused = json.loads(done.stdout)
    assert "--temperature" in helped and "Divide the logits" in helped
    assert "run in" in trained, trained
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["temperature"] == 0.5 and saved["model_config"]["temperature"] == 0.5
    checkpoint = json.loads((run / "checkpoints/last/checkpoint.json").read_text())
    assert checkpoint["model_config"]["temperature"] == 0.5
    assert "run in" in rerun, rerun
    rerun_saved = json.loads((again / "config.json").read_text())
    assert rerun_saved["train"]["temperature"] == 0.5 and rerun_saved["train"]["seed"] == 1
    assert refused.strip() == "error: --temperature applies to scaled only"


def test_a_config_is_checked_once_on_its_way_to_a_run(synthetic_store, tmp_path, monkeypatch):
    checks: list[str] = []
    for config in (TrainConfig, EvalConfig):
        check = config.check

        def counted(self, check=check):
            checks.append(type(self).__name__)
            check(self)

        monkeypatch.setattr(config, "check", counted)
    out = tmp_path / "run"
    trained = runner.invoke(
        app,
        ["train", "--feats", synthetic_store.location, "--model", "nearest-mean", "--way", "3",
         "--shot", "1", "--query", "1", "--val-episodes", "2", "--out", str(out)],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(
        app, ["evaluate", "--run", str(out), "--way", "3", "--shot", "1", "--episodes", "2"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert checks == ["TrainConfig", "EvalConfig"]


def test_a_missing_required_option_names_what_the_command_needs(tmp_path):
    result = runner.invoke(app, ["explain", "--run", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == (
        "error: missing --query VIDEO_ID, --support VIDEO_ID (sact explain needs --run DIR, "
        "--query VIDEO_ID and --support VIDEO_ID)\n"
    )
