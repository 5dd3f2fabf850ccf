"""A full disk: extraction and training stop with one line, keep what they wrote, and the same
command (or --resume) carries on once there is space. On a real small tmpfs where this machine
lets the suite mount one (tests.faults.full_disk), and everywhere with writes that fail."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sact.cli import app
from sact.fewshot.checkpoints import read_checkpoint
from sact.store.backends import open_feature_set
from sact.store.zarr_store import FeatureSetWriter
from sact.testing.extraction import tiny_cli_options
from tests.faults.full_disk import can_mount_tmpfs, in_a_namespace

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_extraction_stopped_by_a_full_disk_says_so_in_one_line_and_resumes(
    video_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "feats.zarr"
    command = ["extract", "--videos", str(video_folder), "--out", str(out)]
    command += tiny_cli_options(shard_size=2)
    original = FeatureSetWriter.write_shard
    writes = []

    def disk_full_at_the_second_shard(self, shard, result):
        writes.append(shard)
        if len(writes) == 2:
            raise NO_SPACE
        return original(self, shard, result)

    monkeypatch.setattr(FeatureSetWriter, "write_shard", disk_full_at_the_second_shard)
    stopped = runner.invoke(app, command)
    assert stopped.exit_code == 2, stopped.output  # was a traceback
    (line,) = error_lines(stopped.stderr)
    assert "stopped: No space left on device" in line and "run the same command again" in line
    assert "Traceback" not in stopped.output
    assert open_feature_set(str(out)).done.tolist() == [True, True, False, False, False]
    monkeypatch.undo()
    resumed = runner.invoke(app, command)
    assert resumed.exit_code == 0, resumed.output
    assert open_feature_set(str(out)).done.all()


def test_training_stopped_by_a_full_disk_keeps_its_checkpoint_and_resumes(
    synthetic_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    command = ["train", "--feats", synthetic_store.location, "--split", synthetic_store.split]
    command += ["--way", "3", "--shot", "1", "--query", "1", "--d-k", "8", "--iterations", "4"]
    command += ["--val-every", "2", "--val-episodes", "4", "--device", "cpu", "--out", str(run)]
    original = Path.write_bytes
    saved = []

    def disk_full_in_the_third_checkpoint(self: Path, data) -> int:
        if self.name == "model.safetensors" and self.parent.name == "last.partial":
            saved.append(self)
            if len(saved) == 3:
                raise NO_SPACE
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_in_the_third_checkpoint)
    stopped = runner.invoke(app, command)
    assert stopped.exit_code == 2, stopped.output  # was a traceback
    (line,) = error_lines(stopped.stderr)
    assert "stopped: No space left on device" in line
    assert f"continue with sact train --out {run} --resume" in line
    assert read_checkpoint(run / "checkpoints/last").step == 2  # the one before: intact
    assert not (run / "checkpoints/last.partial").exists()  # the half-written one is gone
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", "--out", str(run), "--resume", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert read_checkpoint(run / "checkpoints/last").step == 4


needs_a_tmpfs = pytest.mark.skipif(
    not can_mount_tmpfs(Path("/tmp")), reason="this machine lets no one mount a tmpfs"
)


@pytest.mark.slow
@needs_a_tmpfs
@pytest.mark.parametrize("command", ["extract", "train"])
def test_on_a_real_full_disk_one_line_then_resumed_equal(command: str, tmp_path: Path) -> None:
    (injection,) = in_a_namespace(command, tmp_path, [0.5])
    assert injection.expected and injection.lost == 0, injection
    assert "No space left on device" in injection.outcome
    assert injection.outcome.endswith("resumed equal")
