"""The command line's own behaviour: defaults from the configs, start-up."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from sact.cli import app
from sact.config import DemoConfig, ExplainConfig
from sact.fewshot.config import EvalConfig, TrainConfig

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
CONFIGS = {
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "demo": DemoConfig,
    "explain": ExplainConfig,
}
# options named differently from their config field
FIELD_OF_OPTION = {("evaluate", "shot"): "shots"}


def config_defaults(config: type) -> dict[str, object]:
    return {
        field.name: field.default
        for field in dataclasses.fields(config)
        if field.default is not dataclasses.MISSING
    }


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_default_is_its_configs_default(command):
    defaults = config_defaults(CONFIGS[command])
    checked = 0
    for parameter in COMMANDS[command].params:
        field = FIELD_OF_OPTION.get((command, parameter.name), parameter.name)
        if field not in defaults:
            continue
        expected = defaults[field]
        default = parameter.default
        assert (tuple(default) if isinstance(default, list) else default) == expected, field
        checked += 1
    assert checked >= 2


def test_the_command_line_starts_without_torch():
    code = "import sys, sact.cli; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"
