"""Evaluation: deterministic, embed-once equals forward, paired comparisons, clear errors."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sact.common.errors import SactError
from sact.fewshot import SACT
from sact.fewshot.accuracy import (
    embed_videos,
    episode_logits,
    mean_and_interval,
    score_episodes,
)
from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.evaluation import EvalConfig, evaluate, results_table
from sact.fewshot.features import SplitFeatures, segment_frames
from sact.fewshot.records import read_record
from sact.fewshot.training import TrainConfig, train
from sact.store.backends import open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_store):
    """The session's store (8 stored frames, models use 4) and two trained runs under one runs/
    folder."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("evaluation")
    location, split = synthetic_store.location, synthetic_store.split
    common = {
        "feats": location,
        "split": str(split),
        "way": 3,
        "shot": 2,
        "query": 2,
        "frames": 4,
        "val_episodes": 10,
        "device": "cpu",
    }
    floor = folder / "runs/floor"
    train(TrainConfig(**common, model="nearest-mean", out=str(floor)))
    sact = folder / "runs/sact"
    train(
        TrainConfig(**common, d_k=16, iterations=30, lr=3e-3, warmup=5, val_every=10, out=str(sact))
    )
    # the sact run is the latest one, whatever the file system's timestamp resolution
    later = time.time() + 10
    os.utime(sact / "checkpoints/last/checkpoint.json", (later, later))
    return folder, location, split, sact, floor


def config(run, **changes) -> EvalConfig:
    settings = {"run": str(run), "way": 3, "shots": (1, 2), "episodes": 60, "device": "cpu"}
    return EvalConfig(**{**settings, **changes})


def test_the_same_evaluation_twice_gives_identical_numbers(runs, tmp_path):
    _, _, _, sact, _ = runs
    first = evaluate(config(sact, out=str(tmp_path / "a.json")))
    second = evaluate(config(sact, out=str(tmp_path / "b.json")))
    assert first.settings == second.settings
    (one_shot, two_shot) = first.settings
    assert (one_shot.shot, two_shot.shot, one_shot.episodes) == (1, 2, 60)
    accuracy = one_shot.runs[str(sact)].accuracy
    assert 0 <= accuracy <= 1 and one_shot.runs[str(sact)].ci95 > 0
    written = (tmp_path / "a.json").read_text()
    assert written == json.dumps(first.to_json(), indent=2) + "\n"


def test_results_land_in_the_run_directory_by_default(runs):
    _, _, _, sact, _ = runs
    results = evaluate(config(sact, shots=(1,), episodes=10))
    record = Path(results.path)
    assert record.parent == sact / "evaluations" and not (sact / "evaluation.json").exists()
    assert json.loads(record.read_text())["model"] == "sact"
    assert results_table(results).row_count == 1


def test_every_evaluation_of_a_run_is_kept(runs):
    """One record per (checkpoint, episodes): the same evaluation again rewrites its own record
    with the same numbers, other episodes or another checkpoint add one; none is lost."""
    _, _, _, sact, floor = runs
    first = evaluate(config(sact, shots=(1,), episodes=12, seed=3, compare=(str(floor),)))
    again = evaluate(config(sact, shots=(1,), episodes=12, seed=3))
    other = evaluate(config(sact, shots=(1,), episodes=12, seed=4))
    last = evaluate(config(sact, shots=(1,), episodes=12, seed=3, checkpoint="last"))
    paths = {first.path, again.path, other.path, last.path}
    assert first.path == again.path and len(paths) == 3
    assert {Path(p).name.split("-")[0] for p in paths} == {"best", "last"}
    records = {path: read_record(Path(path)) for path in [first.path, other.path]}
    for results in (first, other):
        record = records[results.path]
        (setting,) = record.settings
        expected = results.settings[0].runs[str(sact)].accuracy
        assert setting.accuracies.mean() == pytest.approx(expected) and len(setting.correct) == 12
        assert record.data["step"] == read_checkpoint(sact / "checkpoints/best").step
    assert records[first.path].settings[0].episodes_digest != (
        records[other.path].settings[0].episodes_digest
    )
    # the compared run keeps its own record, on the same episodes
    (theirs,) = read_record(Path(first.records[str(floor)])).settings
    assert theirs.episodes_digest == records[first.path].settings[0].episodes_digest
    assert str(floor) in records[first.path].data["compared"]


def test_embedding_once_gives_the_logits_of_a_full_forward(runs):
    _, location, split, sact, _ = runs
    model = read_checkpoint(sact / "checkpoints/best").build()
    feature_set = open_feature_set(location)
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    episodes = EpisodeSampler(pool, way=3, shot=2, queries=1).episodes(10, seed=0)
    features = SplitFeatures(feature_set, pool, frames=4, device=torch.device("cpu"))
    positions = np.arange(len(pool))
    embedding, row_of = embed_videos(model, features, positions, batch_size=7)
    cached = list(episode_logits(model, embedding, row_of, episodes))
    with torch.no_grad():
        for episode, logits in zip(episodes, cached, strict=True):
            support = features.videos(episode.support, segment_frames(8, 4, len(episode.support)))
            query = features.videos(episode.query, segment_frames(8, 4, len(episode.query)))
            labels = torch.from_numpy(episode.support_labels())
            torch.testing.assert_close(logits, model(support, labels, query), rtol=1e-5, atol=1e-5)


def test_episode_files_and_paired_comparisons(runs, tmp_path):
    _, _, _, sact, floor = runs
    episodes_file = tmp_path / "episodes.json"
    results = evaluate(config(sact, episodes_file=str(episodes_file), compare=(str(floor),)))
    assert episodes_file.is_file()
    again = evaluate(config(sact, episodes_file=str(episodes_file), shots=(5,), episodes=3))
    # the file decides the episodes: its 1- and 2-shot settings, 60 episodes each
    assert [s.shot for s in again.settings] == [1, 2]
    for setting, repeated in zip(results.settings, again.settings, strict=True):
        assert repeated.runs[str(sact)] == setting.runs[str(sact)]
        ours = setting.runs[str(sact)].accuracy
        theirs = setting.runs[str(floor)].accuracy
        paired = setting.paired_differences[str(floor)]
        assert paired.difference == pytest.approx(ours - theirs)
        assert paired.ci95 >= 0
    itself = evaluate(config(sact, episodes_file=str(episodes_file), compare=(str(sact),)))
    paired = itself.settings[0].paired_differences[str(sact)]
    assert (paired.difference, paired.ci95) == (0.0, 0.0)


def test_the_latest_run_is_the_default(runs, tmp_path):
    folder, _, _, sact, _ = runs
    results = evaluate(
        EvalConfig(runs_dir=str(folder / "runs"), way=3, shots=(1,), episodes=5, device="cpu",
                   out=str(tmp_path / "latest.json"))
    )  # fmt: skip
    assert list(results.runs) == [str(sact)]
    with pytest.raises(SactError, match="no trained run under"):
        evaluate(EvalConfig(runs_dir=str(tmp_path / "none")))


def test_confidence_interval_is_1_96_std_over_sqrt_n():
    values = np.array([1.0, 0.0, 1.0, 1.0])
    mean, interval = mean_and_interval(values)
    assert mean == 0.75 and interval == pytest.approx(1.96 * np.std(values) / math.sqrt(4))


def test_a_checkpoint_that_does_not_fit_the_store_is_refused(runs, tmp_path, synthetic_store):
    _, _, _, sact, _ = runs
    other = synthetic_store.write_like(tmp_path / "wide.zarr", dim=8)
    with pytest.raises(SactError, match=r"expects D=16, grid \(2, 2\), T=4; .* has D=8"):
        evaluate(config(sact, feats=other))
    short = synthetic_store.write_like(tmp_path / "short.zarr", frames=2)
    with pytest.raises(SactError, match=r"T=4; feature set synthetic has .* T=2"):
        evaluate(config(sact, feats=short))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"way": 6}, "6-way episodes need 6 classes; test has 5"),
        ({"shots": (6,)}, "shot \\+ query = 7 videos; test has 0"),
        ({"checkpoint": "middle"}, "--checkpoint must be best, last or untrained"),
        ({"ckpt": "somewhere"}, "pass --run or --ckpt, not both"),
        ({"episodes": 0}, "need --episodes >= 1"),
        ({"split": "holdout"}, "--split must be train, val or test"),
    ],
)
def test_bad_evaluations_are_refused_with_one_line(runs, changes, message):
    _, _, _, sact, _ = runs
    with pytest.raises(SactError, match=message) as error:
        evaluate(config(sact, **changes))
    assert "\n" not in str(error.value)


def test_a_split_whose_videos_are_not_in_the_store_is_refused(runs, tmp_path):
    _, _, _, sact, _ = runs
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign/testlist01.txt").write_text("jump/abc\nrun/def\n")
    with pytest.raises(SactError, match="none of the 2 videos"):
        evaluate(config(sact, split_list=str(tmp_path / "foreign")))
    with pytest.raises(SactError, match=r"run directory .* does not exist"):
        evaluate(config(tmp_path / "no-run"))
    with pytest.raises(SactError, match="no checkpoint at"):
        evaluate(EvalConfig(ckpt=str(tmp_path)))


def test_evaluation_reads_the_store_once_front_to_back_and_scores_as_a_forward_per_episode(
    tmp_path,
):
    """A store in another order than the split's classes (SSv2's, extracted from a flat folder):
    every test video is read once, in store order, and each episode's accuracy is the one a full
    forward per episode gives."""
    classes, per_class = 6, 8
    parts = {"train": range(0), "val": range(0), "test": range(classes)}
    split = write_split_lists(tmp_path / "split", classes, per_class, parts)
    location = write_synthetic_store(
        tmp_path / "feats.zarr",
        classes=classes,
        videos_per_class=per_class,
        frames=4,
        shard_size=4,
        shuffled=True,
    )
    feature_set = open_feature_set(location)
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    assert not (np.diff(pool.store_indices) > 0).all()  # the pool's order is not the store's
    read_rows: list[np.ndarray] = []  # in the order issued: one reader thread below
    read = feature_set.read

    def recorded(indices, *args, **kwargs):
        read_rows.append(np.asarray(indices))
        return read(indices, *args, **kwargs)

    feature_set.read = recorded  # type: ignore[method-assign]
    features = SplitFeatures(feature_set, pool, frames=4, device=torch.device("cpu"), cache_gb=0.0)
    torch.manual_seed(0)
    model = SACT(dim=16, frames=4, grid=(2, 2), d_k=16).eval()
    episodes = EpisodeSampler(pool, way=3, shot=2, queries=2).episodes(30, seed=0)
    (accuracies,) = score_episodes(model, [features], [episodes], batch_size=5, workers=1)
    rows = np.concatenate(read_rows)
    assert len(read_rows) > 1 and (np.diff(rows) > 0).all()  # once each, front to back
    assert set(rows) <= set(pool.store_indices)
    forward = []
    with torch.no_grad():
        for episode in episodes:
            support = features.videos(episode.support, segment_frames(4, 4, len(episode.support)))
            query = features.videos(episode.query, segment_frames(4, 4, len(episode.query)))
            logits = model(support, torch.from_numpy(episode.support_labels()), query)
            correct = (logits.argmax(1).numpy() == episode.query_labels()).sum()
            forward.append(correct / len(episode.query))
    np.testing.assert_array_equal(accuracies, forward)
    assert mean_and_interval(accuracies) == mean_and_interval(np.array(forward))
