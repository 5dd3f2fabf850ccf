"""`sact train --log tensorboard`, `--config RUN/config.json`, `--warmup`, `--weight-decay`.

The TensorBoard event file is read back with TensorBoard's own reader (EventAccumulator) and
compared with metrics.jsonl, which stays the record of the run.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from sact.cli import app
from sact.common.errors import Interrupted
from sact.fewshot.config import TrainConfig, prepare_training, read_train_config
from sact.fewshot.training import Trainer, learning_rate, read_metrics, train
from sact.testing.stores import write_split_lists, write_synthetic_store

CLASSES, VIDEOS = 12, 5
PARTS = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-logging")
    split = write_split_lists(folder / "split", CLASSES, VIDEOS, PARTS)
    location = write_synthetic_store(
        folder / "feats.zarr", classes=CLASSES, videos_per_class=VIDEOS, frames=4
    )
    return location, str(split)


def tiny(store, out: Path, **changes) -> TrainConfig:
    location, split = store
    config = TrainConfig(
        feats=location,
        split=split,
        way=3,
        shot=2,
        query=1,
        d_k=16,
        iterations=6,
        lr=3e-3,
        warmup=2,
        tasks_per_batch=1,
        val_every=3,
        val_episodes=5,
        out=str(out),
        device="cpu",
    )
    return replace(config, **changes)


def test_tensorboard_event_file_mirrors_metrics_jsonl(store, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(store, run, log="tensorboard"))
    records = read_metrics(run / "metrics.jsonl")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for key, tag in {
        "loss": "train/loss",
        "train_accuracy": "train/accuracy",
        "lr": "train/learning_rate",
        "val_accuracy": "val/accuracy",
    }.items():
        logged = [r for r in records if key in r]
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [r["step"] for r in logged], tag
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in logged]), tag
    lrs = [e.value for e in events.Scalars("train/learning_rate")]
    assert lrs == pytest.approx([learning_rate(tiny(store, run), s) for s in range(1, 7)])
    assert [e.step for e in events.Scalars("val/accuracy")] == [0, 3, 6]
    assert set(tags["images"]) == {"figures/attention", "figures/training_curve"}
    attention = events.Images("figures/attention")
    assert [image.step for image in attention] == [0, 3, 6]
    (curve,) = events.Images("figures/training_curve")
    assert curve.step == 6 and curve.width > 100 and curve.encoded_image_string[:4] == b"\x89PNG"
    assert (run / "val_attention.png").is_file()


def test_resumed_run_purges_the_events_after_its_checkpoint(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted during step 5 (last checkpoint at step 3): the resumed run logs steps 4.. again
    and TensorBoard shows each step once, as metrics.jsonl does."""
    run = tmp_path / "run"
    config = tiny(store, run, log="tensorboard")
    take_step = Trainer.train_step

    def interrupted_at_step_five(self, tasks):
        if self.step == 4:
            raise KeyboardInterrupt
        return take_step(self, tasks)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_step_five)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.setattr(Trainer, "train_step", take_step)
    train(replace(config, resume=True))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [e.step for e in events.Scalars("train/loss")] == logged == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val/accuracy")] == [0, 3, 6]


def test_rerun_from_a_saved_config_with_overrides(store, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(tiny(store, first, seed=3, warmup=1, weight_decay=0.05))
    saved = read_train_config(first / "config.json")
    assert (saved.seed, saved.warmup, saved.weight_decay) == (3, 1, 0.05)
    runner = CliRunner()
    config_file = str(first / "config.json")
    second = tmp_path / "second"  # the same settings again: the same run
    result = runner.invoke(app, ["train", "--config", config_file, "--out", str(second)])
    assert result.exit_code == 0, result.output
    assert read_train_config(second / "config.json") == replace(saved, out=str(second))
    losses = [
        [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
        for run in (first, second)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    third = tmp_path / "third"  # typed options override the saved ones
    command = ["train", "--config", config_file, "--out", str(third), "--iterations", "3"]
    result = runner.invoke(app, [*command, "--seed", "4"])
    assert result.exit_code == 0, result.output
    rerun = read_train_config(third / "config.json")
    assert rerun == replace(saved, out=str(third), iterations=3, seed=4)
    again = prepare_training(saved, rerun=first / "config.json", typed=["seed"]).config
    assert again.out is None and not again.resume


def test_warmup_and_weight_decay_options_and_a_run_shorter_than_the_warmup(
    store, tmp_path: Path
) -> None:
    runner = CliRunner()
    location, split = store
    out = tmp_path / "short"
    command = ["train", "--feats", location, "--split", split, "--way", "3", "--shot", "2"]
    command += ["--query", "1", "--d-k", "16", "--iterations", "2", "--val-every", "2"]
    command += ["--val-episodes", "5", "--device", "cpu", "--out", str(out)]
    command += ["--warmup", "10", "--weight-decay", "0.2", "--lr", "0.001"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "2 steps are fewer than the 10 warm-up steps" in result.output
    assert "rises to 0.0002" in result.output
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["warmup"], saved["weight_decay"]) == (10, 0.2)
    bad = runner.invoke(app, ["train", "--config", str(tmp_path / "missing.json")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    assert "\n" not in bad.output.strip()


def test_log_tensorboard_without_the_package_is_one_line(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else real_find_spec(name, *args),
    )
    location, _ = store
    result = CliRunner().invoke(
        app, ["train", "--feats", location, "--log", "tensorboard", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --log tensorboard needs the tensorboard package: pip install 'sact[tensorboard]'"
    )
    assert not (tmp_path / "r").exists()
    bad = CliRunner().invoke(app, ["train", "--feats", location, "--log", "wandb"])
    assert bad.exit_code == 2 and "--log must be tensorboard, got 'wandb'" in bad.output
