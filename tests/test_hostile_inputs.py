"""Hostile inputs are refused in one line, before anything is read into memory or executed: split
lists whose parts share a class, pickled objects in a resume state or a weights file, a store
claiming absurd shapes or dtypes (tests.faults.hostile makes them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from sact.cli import app
from sact.data.split_lists import SplitError, load_split
from sact.fewshot.training import TrainConfig, train
from sact.store.feature_set import MAX_VIDEOS
from sact.testing.extraction import tiny_cli_options
from sact.testing.stores import write_synthetic_store
from tests.faults.hostile import ABSURD_VIDEOS, claim, claims_absurd_videos

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """What a malicious pickle carries: an object whose unpickling calls a function."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def assert_refused_in_one_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.output and "this ran" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def write_lists(folder: Path, **parts: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        (folder / f"{part}list01.txt").write_text(lines)
    return folder


def test_split_lists_sharing_a_class_are_refused(tmp_path: Path, video_folder: Path) -> None:
    split = write_lists(
        tmp_path / "split",
        train="juggling/j2\nriding bike/r2\n",
        val="riding bike/r1\n",
        test="juggling/j1\n",
    )
    with pytest.raises(SplitError, match="class 'riding bike' is in both train"):
        load_split(str(split))  # accepted before: a model tested on a class it trained on
    extract = ["extract", "--videos", str(video_folder), "--out", str(tmp_path / "f.zarr")]
    assert_refused_in_one_line(
        runner.invoke(app, [*extract, *tiny_cli_options(), "--split", str(split)]),
        "class 'riding bike' is in both train (trainlist01.txt line 2) and val "
        "(vallist01.txt line 1)",
        "must be disjoint",
    )


def test_a_resume_state_holding_a_pickle_is_refused(synthetic_store, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = TrainConfig(
        feats=synthetic_store.location, split=synthetic_store.split, way=3, shot=1, query=1,
        frames=4, d_k=8, iterations=2, warmup=0, tasks_per_batch=1, val_every=2,
        val_episodes=2, out=str(run), device="cpu",
    )  # fmt: skip
    train(config)
    resume = run / "checkpoints/last/resume.pt"
    state = torch.load(resume, weights_only=True)
    torch.save({**state, "optimizer": Payload()}, resume)
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--device", "cpu"])
    assert_refused_in_one_line(
        result, str(resume), "holds pickled code (print) besides tensors", "refused"
    )


def test_a_weights_file_holding_a_pickle_is_refused(tmp_path: Path, video_folder: Path) -> None:
    weights = tmp_path / "resnet10t.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, weights)
    options = tiny_cli_options(random_init=False, weights=weights)
    extract = ["extract", "--videos", str(video_folder), "--out", str(tmp_path / "f.zarr")]
    assert_refused_in_one_line(
        runner.invoke(app, [*extract, *options]), str(weights), "holds pickled code (print)"
    )


@pytest.mark.parametrize(
    ("damage", "claimed"),
    [
        (
            claims_absurd_videos,
            f"features of shape ({ABSURD_VIDEOS}, 4, 4, 16): N = {ABSURD_VIDEOS} is outside "
            f"1..{MAX_VIDEOS}",
        ),
        (
            lambda store, name: claim(store, name, "features", data_type="float64"),
            "features of dtype float64, not float16",
        ),
        (
            lambda store, name: claim(store, name, "done", shape=[3]),
            "done of length 3 for 4 videos",
        ),
        (
            lambda store, name: claim(store, name, None, grid=[1000, 1000]),
            "a patch grid [1000, 1000] that does not lay out its P = 4 patches",
        ),
    ],
)
def test_a_store_claiming_absurd_shapes_or_dtypes_is_refused_before_reading(
    tmp_path: Path, damage, claimed: str
) -> None:
    # Before, sact info and sact train allocated what the store claimed (10^12 ids: a
    # MemoryError traceback, or all of the machine's memory for a smaller lie) or crashed later.
    store = Path(write_synthetic_store(tmp_path / "feats.zarr", classes=2, videos_per_class=2))
    damage(store, "synthetic")
    for command in (["info", str(store)], ["train", "--feats", str(store), "--device", "cpu"]):
        assert_refused_in_one_line(
            runner.invoke(app, command), f"feature set synthetic in {store} claims {claimed}"
        )
