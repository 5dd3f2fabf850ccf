"""The command line's own behaviour: defaults from the configs, help, version, usage errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

import sact
from sact.cli import app
from sact.demo.config import DemoConfig
from sact.extract.config import ExtractConfig
from sact.fewshot.config import EvalConfig, ExplainConfig, TrainConfig

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
CONFIGS = {
    "extract": ExtractConfig,
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "demo": DemoConfig,
    "explain": ExplainConfig,
}
# options named differently from their config field
FIELD_OF_OPTION = {("evaluate", "shot"): "shots"}


def config_defaults(config: type) -> dict[str, object]:
    values = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return values


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


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sact {sact.__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_ends_with_examples_of_that_command(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.stdout.rstrip().splitlines()]
    examples = lines[lines.index("Examples:") + 1 :]
    commands = [line for line in examples if line]
    assert 2 <= len(commands) <= 3
    assert all(f" {command} " in line or line.endswith(f" {command}") for line in commands)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--lr", "abc"], "invalid value for '--lr'"),
        (["train", "--bogus"], "no such option: --bogus"),
        (["trian"], "no such command 'trian'"),
        (["info"], "missing argument 'store'"),
    ],
)
def test_usage_errors_are_one_line(arguments, message):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "--help" in result.output and "╭" not in result.output


def test_the_command_line_starts_without_torch():
    heavy = "('torch', 'timm', 'av', 'numpy')"
    code = f"import sys, sact.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"


# what `sact` imports before it answers: run in a fresh process, the test session has torch already
IMPORTS_WHEN_DONE = """
import runpy, sys
sys.argv = ["sact", *sys.argv[1:]]
try:
    runpy.run_module("sact.cli", run_name="__main__")
except SystemExit as exit:
    print(exit.code, sorted(m for m in ("torch", "timm", "av") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "arguments",
    [
        ["extract", "--videos", "missing", "--out", "f.zarr"],
        ["extract", "--videos", ".", "--out", "f.zarr", "--split", "no_such_split"],
        ["extract", "--videos", ".", "--out", "f.zarr", "--weights", "missing.safetensors"],
        ["train", "--feats", "missing.zarr"],
        ["train", "--feats", ".", "--model", "bert"],
        ["evaluate"],
        ["evaluate", "--run", "runs/missing"],
        ["evaluate", "--run", ".", "--split", "holdout"],
    ],
)
def test_a_wrong_command_is_refused_before_torch_is_imported(tmp_path, arguments):
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_WHEN_DONE, *arguments],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert done.stderr.startswith("error: ")
