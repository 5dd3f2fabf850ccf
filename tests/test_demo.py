"""`sact demo` end to end on a tiny config: the real entry points, generated videos, every model
variant with two seeds, the report and the prediction beside it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sact.common.claims import CLAIMS_PREFIX
from sact.demo.run import TASKS_PREDICTED, VARIANTS, DemoConfig, DemoError, run_demo
from sact.demo.synthetic import TASKS

TINY = {
    "videos_per_class": 2,
    "video_frames": 6,
    "video_size": 32,
    "size": 32,
    "frames": 4,
    "workers": 0,
    "seeds": 2,
    "task": "order",
    "training": replace(
        DemoConfig.training, d_k=8, iterations=2, val_every=2, val_episodes=2, shot=1, query=1
    ),
    "evaluation": replace(DemoConfig.evaluation, episodes=30, shots=(1,)),
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    console = Console(file=open(out / "console.txt", "w"), width=120)  # noqa: SIM115
    result = run_demo(DemoConfig(out=out / "demo", **TINY), console=console)
    console.file.close()
    return result, out


@pytest.mark.slow
def test_every_variant_and_seed_is_trained_evaluated_and_reported(demo_run) -> None:
    result, out = demo_run
    saved = json.loads(result.path.read_text())
    assert saved == result.results and set(saved["tasks"]) == {"order"}
    task = saved["tasks"]["order"]
    rows = task["report"]["rows"]
    names = [Path(row["runs"][0]).name.rsplit("-seed", 1)[0] for row in rows]
    assert names == [variant.name for variant in VARIANTS]  # SA-CT first: the reference
    for name, row in zip(names, rows, strict=True):
        assert row["seeds"] == ([0] if name == "nearest-mean" else [0, 1])
        (score,) = row["scores"]
        assert 0.0 <= score["accuracy"] <= 1.0 and len(score["seed_accuracies"]) == len(
            row["seeds"]
        )
    assert task["report"]["settings"][0]["episodes"] == 30
    # every run kept its evaluation, on the same episodes
    digests = {
        json.loads(path.read_text())["settings"][0]["episodes_digest"]
        for path in (out / "demo/order/runs").rglob("evaluations/*.json")
    }
    assert len(digests) == 1
    # the prediction is written beside the measurement, every variant in one tier
    assert task["predicted"]["tiers"] == [list(t) for t in TASKS_PREDICTED["order"].tiers]
    assert sorted(task["measured"]["ranks"].values()) == list(range(1, len(VARIANTS) + 1))
    assert "predicted tier" in [column.header for column in result.tables[0].columns]
    assert (
        "| SA-CT (sact default) |" in result.markdown
        and (out / "demo/demo.md").read_text() == result.markdown
    )
    progress = (out / "console.txt").read_text()
    assert "order 5/5" in progress and "extract" in progress


def test_every_task_predicts_a_tier_for_every_variant() -> None:
    assert set(TASKS_PREDICTED) == set(TASKS)
    for prediction in TASKS_PREDICTED.values():
        listed = [name for tier in prediction.tiers for name in tier]
        assert sorted(listed) == sorted(variant.name for variant in VARIANTS)


@pytest.mark.slow
def test_demo_draws_its_figures(demo_run) -> None:
    result, _ = demo_run
    figures = result.results["tasks"]["order"]["figures"]
    assert "attention" in figures and "training_curve_sact" in figures
    for path in figures.values():
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 5  # something drawn


@pytest.mark.slow
def test_demo_test_classes_are_unseen_in_training(demo_run) -> None:
    result, _ = demo_run
    dataset = Path(result.results["tasks"]["order"]["dataset"])
    classes = {
        part: {line.split("/")[0] for line in (dataset / f"{part}list.txt").read_text().split()}
        for part in ("train", "val", "test")
    }
    assert not classes["train"] & classes["test"] and not classes["val"] & classes["test"]


def finished_work(task_dir: Path) -> dict[str, int]:
    """Modification times of the videos, features, checkpoints and evaluations the demo wrote."""
    written = [
        *(task_dir / "dataset").rglob(f"*{DemoConfig.video_suffix}"),
        *(task_dir / "feats.zarr").rglob("*"),
        *(task_dir / "runs").glob("*/checkpoints/*/*"),
    ]
    return {
        str(path): path.stat().st_mtime_ns
        for path in written
        if path.is_file() and CLAIMS_PREFIX not in path.parts  # claims are bookkeeping, not work
    }


@pytest.mark.slow
def test_demo_again_resumes_and_gives_the_same_numbers(demo_run) -> None:
    result, out = demo_run
    before = finished_work(out / "demo/order")
    again = run_demo(DemoConfig(out=out / "demo", **TINY), console=Console(quiet=True))
    assert again.results["tasks"]["order"]["report"] == result.results["tasks"]["order"]["report"]
    assert finished_work(out / "demo/order") == before  # nothing generated, extracted or trained


def test_an_unknown_task_or_no_seed_is_refused(tmp_path) -> None:
    with pytest.raises(DemoError, match="--task must be all or one of appearance, order"):
        run_demo(DemoConfig(out=tmp_path, task="dance"), console=Console(quiet=True))
    with pytest.raises(DemoError, match="--seeds must be at least 1"):
        run_demo(DemoConfig(out=tmp_path, seeds=0), console=Console(quiet=True))


def test_a_task_folder_of_the_demo_before_the_sweep_is_refused_in_one_line(tmp_path) -> None:
    (tmp_path / "order/runs/sact/seed0").mkdir(parents=True)
    with pytest.raises(DemoError, match=r"order/runs/sact is a run of an older sact demo"):
        run_demo(DemoConfig(out=tmp_path, task="order"), console=Console(quiet=True))
