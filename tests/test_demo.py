"""`sact demo` end to end on a tiny config: the real entry points, generated videos, 3 models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sact.demo import KINDS, DemoConfig, run_demo
from sact.extract.claims import CLAIMS_PREFIX

MODELS = list(KINDS)

TINY = {
    "videos_per_class": 2,
    "video_frames": 6,
    "video_size": 32,
    "size": 32,
    "frames": 4,
    "d_k": 8,
    "iterations": 2,
    "val_every": 2,
    "val_episodes": 2,
    "episodes": 30,
    "train_shot": 1,
    "train_query": 1,
    "shots": (1,),
    "workers": 0,
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    console = Console(file=open(out / "console.txt", "w"), width=120)  # noqa: SIM115
    result = run_demo(DemoConfig(out=out / "demo", **TINY), console=console)
    console.file.close()
    return result, out


def test_demo_writes_results_for_all_three_models(demo_run) -> None:
    result, out = demo_run
    saved = json.loads(result.path.read_text())
    assert saved == result.results
    assert saved["config"]["iterations"] == 2
    (setting,) = saved["settings"]
    assert (setting["way"], setting["shot"], setting["episodes"]) == (5, 1, 30)
    assert set(setting["accuracy"]) == set(MODELS)
    for score in setting["accuracy"].values():
        assert 0.0 <= score["accuracy"] <= 1.0 and score["ci95"] >= 0.0
    assert set(setting["sact_minus"]) == {"nearest-mean", "trx"}
    # the paired difference is the difference of the means (same episodes for every model)
    for model, diff in setting["sact_minus"].items():
        expected = setting["accuracy"]["sact"]["accuracy"] - setting["accuracy"][model]["accuracy"]
        assert diff["difference"] == pytest.approx(expected)
    assert [column.header for column in result.table.columns][2:] == [
        "SA-CT", "nearest mean", "TRX", "SA-CT − nearest mean", "SA-CT − TRX",
    ]  # fmt: skip
    progress = (out / "console.txt").read_text()
    assert "5/5" in progress and "extract" in progress


def test_demo_draws_its_figures(demo_run) -> None:
    result, _ = demo_run
    figures = result.results["figures"]
    assert set(figures) == {"attention", *(f"training_curve_{m}" for m in MODELS)}
    for path in figures.values():
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 5  # something drawn


def test_demo_test_classes_are_unseen_in_training(demo_run) -> None:
    result, _ = demo_run
    dataset = Path(result.results["dataset"])
    classes = {
        part: {line.split("/")[0] for line in (dataset / f"{part}list.txt").read_text().split()}
        for part in ("train", "val", "test")
    }
    assert not classes["train"] & classes["test"] and not classes["val"] & classes["test"]


def finished_work(demo_dir: Path) -> dict[str, int]:
    """Modification times of the videos, features and checkpoints the demo wrote."""
    written = [
        *(demo_dir / "dataset").rglob(f"*{DemoConfig.video_suffix}"),
        *(demo_dir / "feats.zarr").rglob("*"),
        *(demo_dir / "runs").glob("*/checkpoints/*/*"),
    ]
    return {
        str(path): path.stat().st_mtime_ns
        for path in written
        if path.is_file() and CLAIMS_PREFIX not in path.parts  # claims are bookkeeping, not work
    }


def test_demo_again_resumes_and_gives_the_same_numbers(demo_run) -> None:
    result, out = demo_run
    before = finished_work(out / "demo")
    again = run_demo(DemoConfig(out=out / "demo", **TINY), console=Console(quiet=True))
    assert again.results["settings"] == result.results["settings"]
    assert finished_work(out / "demo") == before  # nothing generated, extracted or trained again
