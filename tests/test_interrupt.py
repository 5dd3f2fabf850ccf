"""Ctrl-C during `sact train`: a real SIGINT, sent to a `sact train` process at a seeded step. The
step under way ends and is saved, one instruction says how to continue, the exit status is 130,
and the continued run is bitwise the one that was never interrupted (on the CPU). A second Ctrl-C
stops at once and keeps the last checkpoint, which resumes bitwise too. Within `sact sweep` the
instruction is the sweep's, and the sweep run again continues the run bitwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.selection import select_checkpoint
from sact.fewshot.sweep import SWEEP_AGAIN, run_sweep
from sact.fewshot.sweep_config import resolve_sweep
from sact.fewshot.training import METRICS_FILE, TrainConfig, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITERATIONS, VAL_EVERY = 12, 4
SIGINT_STATUS = 130
# `sact train` in a process of its own, whose train_step sends the process SIGINT `presses` times
# while step `stop` is under way, after its optimiser step (where an interrupt costs the most)
PRESSED_DURING_A_STEP = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as the test's own runs: CPU sums in the same order
from sact.fewshot.training import Trainer
stop, presses = int(sys.argv[1]), int(sys.argv[2])
take_step = Trainer.train_step
def pressed_during_step(self, tasks):
    result = take_step(self, tasks)
    if self.step + 1 == stop:
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
    return result
Trainer.train_step = pressed_during_step
from sact.cli import app
app(sys.argv[3:], prog_name="sact")
"""


def options(store) -> dict[str, object]:
    return {
        "feats": store.location, "split": store.split, "way": 3, "shot": 2, "query": 2,
        "frames": 4, "d_k": 16, "iterations": ITERATIONS, "lr": 3e-3, "warmup": 5,
        "tasks_per_batch": 2, "val_every": VAL_EVERY, "val_episodes": 20, "device": "cpu",
    }  # fmt: skip


def sweep_file(store, folder: Path) -> Path:
    """A sweep of one run, SA-CT seed 0, trained as `whole` (`options`), scored on 20 episodes."""
    train = {k: v for k, v in options(store).items() if k not in ("feats", "split", "iterations",
                                                                  "device")}  # fmt: skip
    path = folder / "sweep.toml"
    path.write_text(
        f'feats = "{store.location}"\nsplit = "{store.split}"\nvariants = ["sact"]\nseeds = 1\n'
        f'shots = [1]\nsteps = {ITERATIONS}\nepisodes = 20\ndevice = "cpu"\n\n[train]\n'
        + "".join(f"{key} = {value}\n" for key, value in train.items())
        + "\n[evaluate]\nway = 3\n"
    )
    return path


def command_line(store, run: Path) -> list[str]:
    arguments = ["train", "--out", str(run)]
    for name, value in options(store).items():
        arguments += ["--" + name.replace("_", "-"), str(value)]
    return arguments


@pytest.fixture(scope="module")
def whole(synthetic_store, tmp_path_factory) -> Path:
    """The run never interrupted."""
    import torch

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("whole") / "run"
    train(TrainConfig(**options(synthetic_store), out=str(run)))  # type: ignore[arg-type]
    return run


def seeded_step() -> int:
    """A step between two validations, drawn with a fixed seed: where a Ctrl-C used to lose
    every step since the last checkpoint."""
    between = [step for step in range(1, ITERATIONS) if step % VAL_EVERY]
    return int(np.random.default_rng(24).choice(between))


def pressed(arguments: list[str], *, stop: int, presses: int) -> subprocess.CompletedProcess[str]:
    """`sact ARGUMENTS` in a process of its own, Ctrl-C pressed `presses` times during step
    `stop`."""
    return subprocess.run(
        [sys.executable, "-c", PRESSED_DURING_A_STEP, str(stop), str(presses), *arguments],
        capture_output=True, text=True, timeout=600, env=os.environ,
    )  # fmt: skip


def interrupted(store, run: Path, *, stop: int, presses: int) -> subprocess.CompletedProcess[str]:
    return pressed(command_line(store, run), stop=stop, presses=presses)


def assert_same_run(run: Path, whole: Path) -> None:
    """Weights of every checkpoint, the resume state and the metrics, bit for bit."""
    for name in ("untrained", "best", "last"):
        for file in ("model.safetensors", "checkpoint.json"):
            got, expected = run / "checkpoints" / name / file, whole / "checkpoints" / name / file
            assert got.read_bytes() == expected.read_bytes(), f"{name}/{file}"
    last = "checkpoints/last/resume.json"
    assert (run / last).read_bytes() == (whole / last).read_bytes()
    assert (run / METRICS_FILE).read_bytes() == (whole / METRICS_FILE).read_bytes()


def resume(run: Path) -> None:
    train(TrainConfig(feats="", out=str(run), resume=True, device="cpu"))


def test_ctrl_c_saves_the_step_under_way_says_one_thing_and_resumes_bitwise(
    synthetic_store, whole, tmp_path
):
    stop, run = seeded_step(), tmp_path / "run"
    completed = interrupted(synthetic_store, run, stop=stop, presses=1)
    assert completed.returncode == SIGINT_STATUS, completed.stderr
    instructions = [line for line in completed.stderr.splitlines() if "continue" in line]
    assert instructions == [
        f"interrupted: step {stop} of {ITERATIONS} saved in {run / 'checkpoints/last'}; "
        f"continue with: sact train --out {run} --resume"
    ], completed.stderr
    assert "the same command" not in completed.stderr
    saved = read_checkpoint(run / "checkpoints/last")
    assert saved.step == stop and saved.val_accuracy is None  # not a validation step
    assert read_metrics(run / METRICS_FILE)[-1]["step"] == stop
    # the run is not finished: its best is the last validation before the interrupt
    assert select_checkpoint(run, "best").checkpoint.step == stop - stop % VAL_EVERY

    resume(run)
    assert_same_run(run, whole)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(
    synthetic_store, whole, tmp_path
):
    stop, run = seeded_step(), tmp_path / "run"
    validated = stop - stop % VAL_EVERY
    completed = interrupted(synthetic_store, run, stop=stop, presses=2)
    assert completed.returncode == SIGINT_STATUS, completed.stderr
    instructions = [line for line in completed.stderr.splitlines() if "continue" in line]
    assert instructions == [
        f"stopped at once during step {stop} of run {run} (saved: step {validated}); "
        f"continue with: sact train --out {run} --resume"
    ], completed.stderr
    assert read_checkpoint(run / "checkpoints/last").step == validated

    resume(run)
    assert_same_run(run, whole)


def test_ctrl_c_in_a_sweep_says_to_run_the_sweep_again_which_continues_bitwise(
    synthetic_store, whole, tmp_path
):
    stop, file, out = seeded_step(), sweep_file(synthetic_store, tmp_path), tmp_path / "sweep"
    completed = pressed(["sweep", "--file", str(file), "--out", str(out)], stop=stop, presses=1)
    assert completed.returncode == SIGINT_STATUS, completed.stderr
    run = out / "runs/sact-seed0"
    instructions = [line for line in completed.stderr.splitlines() if "continue" in line]
    assert instructions == [
        f"interrupted: step {stop} of {ITERATIONS} saved in {run / 'checkpoints/last'}; "
        f"{SWEEP_AGAIN}"
    ], completed.stderr
    assert "--resume" not in completed.stderr

    run_sweep(resolve_sweep({"out": str(out)}, file=file))  # the same sweep again
    assert_same_run(run, whole)
