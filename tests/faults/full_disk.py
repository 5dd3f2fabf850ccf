"""A full disk, for real: a small tmpfs of the suite's own, mounted in a private mount namespace
(``unshare --mount --map-root-user``: no root needed where user namespaces are allowed, nothing
mounted outside the process tree), filled by a ballast file until only a chosen fraction of what a
command writes still fits. The command meets ENOSPC where it happens to be; then the ballast goes
(space is back) and the same command runs again.

    in_a_namespace("extract", workdir, rooms=[0.1, 0.4, 0.7])   # or "train"

runs ``python -m tests.faults.full_disk extract WORKDIR --room 0.1 0.4 0.7`` in the namespace and
reads back one ``Injection`` (tests.faults.scenarios) per fraction, as JSON lines on its stdout. A
fraction is of the space a clean run takes; each stop must be one line saying the disk is full,
leave what was written before readable and as it was, and the same command (for training,
``--resume`` once the run exists) must then finish equal to a clean run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tests.faults.scenarios import (
    FEATURE_SET,
    Injection,
    extract_arguments,
    failure_message,
    run_differences,
    run_sact,
    steps_lost,
    store_arrays,
    store_differences,
    suite_environment,
    train_arguments,
    videos_lost,
    write_kill_videos,
    write_training_store,
)

NO_SPACE = "No space left on device"
MOUNT_TIMEOUT_S = 30


def namespace_command() -> list[str]:
    return ["unshare", "--mount", "--map-root-user"]


def can_mount_tmpfs(workdir: Path) -> bool:
    """Whether this machine lets the suite mount a tmpfs in a namespace of its own."""
    target = workdir / ".mount-probe"
    target.mkdir(parents=True, exist_ok=True)
    try:
        probe = subprocess.run(
            [*namespace_command(), "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)],
            capture_output=True,
            timeout=MOUNT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        target.rmdir()
    return probe.returncode == 0


def _mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        check=True,
        timeout=MOUNT_TIMEOUT_S,
    )


def _free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _footprint(disk: Path, tree: Path) -> int:
    """Bytes of ``disk`` that a copy of ``tree`` takes (pages, not file sizes)."""
    before = _free_bytes(disk)
    shutil.copytree(tree, disk / "footprint")
    taken = before - _free_bytes(disk)
    shutil.rmtree(disk / "footprint")
    return taken


def _fill(disk: Path, *, leave: int) -> Path:
    """A ballast file leaving ``leave`` bytes free on ``disk``."""
    ballast = disk / "ballast"
    with ballast.open("wb") as file:
        file.write(bytes(max(0, _free_bytes(disk) - leave)))
    return ballast


def _one_line_no_space(completed: subprocess.CompletedProcess[str]) -> str | None:
    """The error line if the command failed with one line saying the disk is full, else None."""
    message = failure_message(completed)
    ok = completed.returncode == 2 and message.startswith("error:") and NO_SPACE in message
    return message if ok else None


def _fill_and_resume(
    fault: str,
    room: float,
    *,
    disk: Path,
    footprint: int,
    arguments: list[str],
    resume: Callable[[], list[str]],
    intact: Callable[[], list[str]],
    differences: Callable[[], list[str]],
    lost: Callable[[], int],
) -> Injection:
    ballast = _fill(disk, leave=int(room * footprint))
    moment = f"{room:.0%} of the space the run needs left free"
    stopped = run_sact(arguments)
    ballast.unlink()
    message = _one_line_no_space(stopped)
    if message is None:
        finished = stopped.returncode in (0, 1) and "Traceback" not in stopped.stderr
        outcome = (
            "finished: the space was enough"
            if finished
            else f"not one clear line: {failure_message(stopped)}"
        )
        return Injection(fault, moment, outcome, False)
    damaged = intact()
    if damaged:
        return Injection(fault, moment, f"{message}; damaged: {damaged}", False, len(damaged))
    resumed = run_sact(resume())
    different = differences()
    if resumed.returncode not in (0, 1):
        outcome = f"{message}; then the resume failed: {failure_message(resumed)}"
    elif different:
        outcome = f"{message}; resumed, but differs in {different}"
    else:
        outcome = f"stopped in one line ({message.removeprefix('error: ')}); resumed equal"
    return Injection(fault, moment, outcome, not different and resumed.returncode in (0, 1), lost())


def extraction_on_a_full_disk(workdir: Path, rooms: Sequence[float]) -> list[Injection]:
    videos = write_kill_videos(workdir / "videos")
    reference = workdir / "reference.zarr"
    if run_sact(extract_arguments(videos, reference)).returncode not in (0, 1):
        raise RuntimeError("the clean run failed")
    footprint_probe = workdir / "probe"
    _mount_tmpfs(footprint_probe, 64 * 2**20)
    footprint = _footprint(footprint_probe, reference)
    disk = workdir / "disk"
    _mount_tmpfs(disk, 2 * footprint + 2**20)
    store = disk / "feats.zarr"
    arguments = extract_arguments(videos, store)
    expected = store_arrays(str(reference), FEATURE_SET)

    def damaged_rows() -> list[str]:
        """Videos that a store on the full disk calls done but whose arrays are not the clean
        run's (none may be: what was written before must stay as it was)."""
        try:
            got = store_arrays(str(store), FEATURE_SET)
        except (KeyError, FileNotFoundError, ValueError):
            return []  # the disk filled before the feature set existed: nothing written
        position = {str(video): i for i, video in enumerate(expected["video_id"])}
        return [
            str(video)
            for row, video in enumerate(got["video_id"])
            if got["done"][row]
            and any(
                not np.array_equal(got[array][row], expected[array][position[str(video)]])
                for array in ("features", "frame_index", "num_frames", "error")
            )
        ]

    injections = []
    for room in rooms:
        injections.append(
            _fill_and_resume(
                "ENOSPC during sact extract",
                room,
                disk=disk,
                footprint=footprint,
                arguments=arguments,
                resume=lambda: arguments,
                intact=damaged_rows,
                differences=lambda: store_differences(str(store), str(reference), FEATURE_SET),
                lost=lambda: videos_lost(str(store), str(reference), FEATURE_SET),
            )
        )
        shutil.rmtree(store, ignore_errors=True)
    return injections


def training_on_a_full_disk(workdir: Path, rooms: Sequence[float]) -> list[Injection]:
    from sact.common.errors import SactError
    from sact.fewshot.checkpoints import checkpoint_folder, read_checkpoint, read_resume_state
    from sact.fewshot.training import CONFIG_FILE

    store, split = write_training_store(workdir)
    reference = workdir / "reference-run"
    if run_sact(train_arguments(store, split, reference)).returncode != 0:
        raise RuntimeError("the clean run failed")
    footprint_probe = workdir / "probe"
    _mount_tmpfs(footprint_probe, 64 * 2**20)
    footprint = _footprint(footprint_probe, reference)
    disk = workdir / "disk"
    _mount_tmpfs(disk, 2 * footprint + 2**20)
    run = disk / "run"
    arguments = train_arguments(store, split, run)
    # What the command said to do: --resume once the run has its config.json, else the same again.
    resume = ["train", "--out", str(run), "--resume", "--device", "cpu"]

    def unreadable_checkpoints() -> list[str]:
        """The checkpoints left in the run that cannot be read back (none may be)."""
        broken = []
        for name in ("best", "last"):
            folder = checkpoint_folder(run / "checkpoints" / name)
            if not folder.exists():
                continue
            try:
                read_checkpoint(folder).build()
                if name == "last":
                    read_resume_state(folder)
            except SactError as error:
                broken.append(f"{name}: {error}")
        return broken

    injections = []
    for room in rooms:
        injections.append(
            _fill_and_resume(
                "ENOSPC during sact train",
                room,
                disk=disk,
                footprint=footprint,
                arguments=arguments,
                resume=lambda: resume if (run / CONFIG_FILE).exists() else arguments,
                intact=unreadable_checkpoints,
                differences=lambda: run_differences(run, reference),
                lost=lambda: steps_lost(run, reference),
            )
        )
        shutil.rmtree(run, ignore_errors=True)
    return injections


SCENARIOS = {"extract": extraction_on_a_full_disk, "train": training_on_a_full_disk}


def in_a_namespace(scenario: str, workdir: Path, rooms: Sequence[float]) -> list[Injection]:
    """Run ``scenario`` in a mount namespace of its own; its injections."""
    command = [*namespace_command(), sys.executable, "-m", "tests.faults.full_disk"]
    command += [scenario, str(workdir), "--room", *(str(room) for room in rooms)]
    completed = subprocess.run(
        command, env=suite_environment(), capture_output=True, text=True, timeout=1800
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{scenario} on a full disk failed: {completed.stderr[-3000:]}")
    return [Injection(**json.loads(line)) for line in completed.stdout.splitlines() if line]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.full_disk", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--room", type=float, nargs="+", required=True)
    options = parser.parse_args(argv)
    for injection in SCENARIOS[options.scenario](options.workdir, options.room):
        print(json.dumps(injection.to_json()), flush=True)


if __name__ == "__main__":
    main()
