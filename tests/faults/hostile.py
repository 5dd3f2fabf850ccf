"""Hostile inputs for the fault-injection suite: files made to mislead or attack sact, each of
which a command must refuse in one line (``error: ...``, exit status 2, no traceback) before it
reads more than it must or runs anything.

    split lists whose train and val share a class         sact extract --split
    a resume state holding a pickle that calls a function   sact train --resume
    a weights file holding such a pickle                    sact extract --weights
    a store claiming 10^12 videos, float64 features or a      sact info, sact train --feats
    grid that does not lay out its patches
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sact.testing.extraction import tiny_cli_options
from tests.faults.scenarios import (
    Injection,
    run_sact,
    train_arguments,
    write_training_store,
)

RAN = "this ran while loading"


class Payload:
    """What a malicious pickle carries: an object whose unpickling calls a function."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (print, (RAN,))


def refusal(completed: subprocess.CompletedProcess[str], fragment: str) -> tuple[str, bool]:
    """What a command did with a hostile input, and whether it is the one-line refusal owed."""
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    traceback = "Traceback" in completed.stderr
    ran = RAN in completed.stdout + completed.stderr
    if len(errors) == 1 and completed.returncode == 2 and not traceback and not ran:
        return f"refused: {errors[0].removeprefix('error: ')}", fragment in errors[0]
    said = completed.stderr.strip()[-300:]
    return f"exit {completed.returncode}, ran the payload: {ran}: {said}", False


def split_sharing_a_class(workdir: Path) -> tuple[list[str], str]:
    from sact.testing.videos import write_video_folder

    videos = write_video_folder(workdir / "videos")
    split = workdir / "split"
    split.mkdir()
    (split / "trainlist01.txt").write_text("juggling/j2\nriding bike/r2\n")
    (split / "vallist01.txt").write_text("riding bike/r1\n")
    (split / "testlist01.txt").write_text("juggling/j1\n")
    out = workdir / "f.zarr"
    arguments = ["extract", "--videos", str(videos), "--out", str(out), "--split", str(split)]
    return [*arguments, *tiny_cli_options()], "class 'riding bike' is in both train"


def resume_state_with_a_pickle(workdir: Path) -> tuple[list[str], str]:
    import torch

    store, split = write_training_store(workdir)
    run = workdir / "run"
    trained = run_sact(train_arguments(store, split, run, iterations=4, val_every=4))
    if trained.returncode != 0:
        raise RuntimeError(f"training the run to attack failed: {trained.stderr[-500:]}")
    resume = run / "checkpoints/last/resume.pt"
    state = torch.load(resume, weights_only=True)
    torch.save({**state, "optimizer": Payload()}, resume)
    return ["train", "--out", str(run), "--resume", "--device", "cpu"], "holds pickled code"


def weights_with_a_pickle(workdir: Path) -> tuple[list[str], str]:
    import torch

    from sact.testing.videos import write_video_folder

    videos = write_video_folder(workdir / "videos")
    weights = workdir / "resnet10t.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, weights)
    options = tiny_cli_options(random_init=False, weights=weights)
    return ["extract", "--videos", str(videos), "--out", str(workdir / "f.zarr"), *options], (
        "holds pickled code"
    )


ABSURD_VIDEOS = 10**12


def claim(store: Path, name: str, array: str | None, **changes: Any) -> None:
    """Rewrite the metadata of ``array`` of feature set ``name`` (None: the feature set's own
    attrs) in a local store with ``changes``, as a damaged or hostile store would hold them."""
    path = store / name / (array or "") / "zarr.json"
    metadata = json.loads(path.read_text())
    if array is None:
        metadata["attributes"]["sact"] |= changes
    else:
        metadata |= changes
    path.write_text(json.dumps(metadata))


def claims_absurd_videos(store: Path, name: str) -> None:
    """Every array claims ABSURD_VIDEOS rows: consistent, so only the limits can tell."""
    from sact.store.feature_set import FEATURES, PER_VIDEO_ARRAYS

    for array in (FEATURES, *PER_VIDEO_ARRAYS):
        shape = json.loads((store / name / array / "zarr.json").read_text())["shape"]
        claim(store, name, array, shape=[ABSURD_VIDEOS, *shape[1:]])


def _store_claiming(workdir: Path, damage: Callable[[Path, str], None]) -> tuple[list[str], str]:
    from sact.testing.stores import write_synthetic_store

    store = Path(write_synthetic_store(workdir / "feats.zarr", classes=2, videos_per_class=2))
    damage(store, "synthetic")
    return ["info", str(store)], "refused before reading it"


HOSTILE = {
    "split lists whose train and val share a class": split_sharing_a_class,
    "a resume state holding a pickle": resume_state_with_a_pickle,
    "a weights file holding a pickle": weights_with_a_pickle,
    f"a store claiming {ABSURD_VIDEOS:.0e} videos": lambda workdir: _store_claiming(
        workdir, claims_absurd_videos
    ),
    "a store claiming float64 features": lambda workdir: _store_claiming(
        workdir, lambda store, name: claim(store, name, "features", data_type="float64")
    ),
    "a store whose grid does not lay out its patches": lambda workdir: _store_claiming(
        workdir, lambda store, name: claim(store, name, None, grid=[1000, 1000])
    ),
}


def hostile_inputs(workdir: Path) -> list[Injection]:
    """Each of HOSTILE made in a folder of its own and given to its command."""
    injections = []
    for number, (fault, make) in enumerate(HOSTILE.items()):
        folder = workdir / f"hostile-{number}"
        folder.mkdir(parents=True)
        arguments, fragment = make(folder)
        outcome, owed = refusal(run_sact(arguments), fragment)
        injections.append(
            Injection(f"hostile input: {fault}", f"sact {arguments[0]}", outcome, owed)
        )
    return injections
