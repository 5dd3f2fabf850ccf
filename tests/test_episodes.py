"""Episodes: drawn from a pool of usable split videos, a pure function of (pool, N, K, Q, seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sact.fewshot.episodes import (
    EpisodeError,
    EpisodeSampler,
    EpisodeSet,
    build_pool,
    load_episodes,
    resolve_split,
    save_episodes,
    split_by_labels,
)
from sact.store.backends import open_feature_set
from sact.testing.stores import class_names, video_id, write_split_lists, write_synthetic_store

CLASSES, VIDEOS = 12, 6
PARTS = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("episodes")
    # class_009 loses one video to a failure and class_010 two: 5 and 4 usable videos left
    failed = [video_id("class_009", 0), video_id("class_010", 0), video_id("class_010", 1)]
    location = write_synthetic_store(
        folder / "feats.zarr", classes=CLASSES, videos_per_class=VIDEOS, failed=failed, shard_size=6
    )
    split = write_split_lists(folder / "split", CLASSES, VIDEOS, PARTS)
    return open_feature_set(location), split


def test_pool_holds_usable_split_videos_sorted_by_class_and_id(store):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    assert pool.classes == ["class_009", "class_010", "class_011"]
    assert len(pool) == 3 * VIDEOS - 3 and pool.unusable == 3 and pool.missing == 0
    assert list(zip(pool.labels, pool.video_ids, strict=True)) == sorted(
        zip(pool.labels, pool.video_ids, strict=True)
    )
    for position, store_index in enumerate(pool.store_indices):
        assert feature_set.video_ids[store_index] == pool.video_ids[position]


def test_episodes_are_well_formed(store):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "train")
    sampler = EpisodeSampler(pool, way=5, shot=2, queries=3)
    for episode in sampler.episodes(50, seed=3):
        assert len(set(episode.classes.tolist())) == 5
        videos = np.r_[episode.support, episode.query]
        assert len(set(videos.tolist())) == 5 * 5  # no video twice in an episode
        labels = np.r_[episode.support_labels(), episode.query_labels()]
        classes = [pool.classes[episode.classes[label]] for label in labels]
        assert [pool.labels[v] for v in videos] == classes


def test_episodes_are_a_pure_function_of_pool_and_seed(store, tmp_path):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "train")
    first = EpisodeSampler(pool, way=3, shot=1, queries=2).episodes(20, seed=7)
    again = EpisodeSampler(pool, way=3, shot=1, queries=2).episodes(20, seed=7)
    other = EpisodeSampler(pool, way=3, shot=1, queries=2).episodes(20, seed=8)
    # the split list's line order does not matter: the pool is sorted
    reversed_split = tmp_path / "reversed"
    reversed_split.mkdir()
    for path in split.iterdir():
        lines = path.read_text().splitlines()[::-1]
        (reversed_split / path.name).write_text("\n".join(lines) + "\n")
    reversed_pool = build_pool(
        feature_set, resolve_split(feature_set, str(reversed_split)), "train"
    )
    shuffled = EpisodeSampler(reversed_pool, way=3, shot=1, queries=2).episodes(20, seed=7)
    for a, b, c in zip(first, again, shuffled, strict=True):
        for name in ("classes", "support", "query"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
            assert np.array_equal(getattr(a, name), getattr(c, name))
    assert any(not np.array_equal(a.support, b.support) for a, b in zip(first, other, strict=True))


def test_classes_with_too_few_videos_are_excluded_and_reported(store):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    sampler = EpisodeSampler(pool, way=2, shot=4, queries=1)  # needs 5: class_010 has 4
    assert sampler.excluded == {"class_010": 4}
    assert "class_010" in sampler.exclusion_note()
    for episode in sampler.episodes(20, seed=0):
        assert pool.classes.index("class_010") not in episode.classes


def test_way_larger_than_classes_is_refused(store):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    with pytest.raises(EpisodeError, match="5-way episodes need 5 classes; test has 3"):
        EpisodeSampler(pool, way=5, shot=1, queries=1)


def test_shot_plus_query_larger_than_classes_allow_is_refused(store):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    with pytest.raises(EpisodeError, match="shot \\+ query = 6 videos; test has 1"):
        EpisodeSampler(pool, way=2, shot=5, queries=1)


def test_split_videos_missing_from_the_store(store, tmp_path):
    feature_set, split = store
    lines = (split / "testlist01.txt").read_text().splitlines()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "testlist01.txt").write_text("\n".join([*lines, "class_009/not_extracted"]) + "\n")
    pool = build_pool(feature_set, resolve_split(feature_set, str(partial)), "test")
    assert pool.missing == 1 and "1 not in the store" in pool.summary()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "testlist01.txt").write_text("a/x\nb/y\n")
    with pytest.raises(EpisodeError, match="none of the 2 videos"):
        build_pool(feature_set, resolve_split(feature_set, str(foreign)), "test")
    with pytest.raises(EpisodeError, match="has no train list"):
        build_pool(feature_set, resolve_split(feature_set, str(foreign)), "train")


def test_without_a_split_the_store_labels_are_divided_by_class(store):
    feature_set, _ = store
    parts = split_by_labels(feature_set)
    classes = {part: {entry.label for entry in entries} for part, entries in parts.items()}
    assert classes["train"] | classes["val"] | classes["test"] == set(class_names(CLASSES))
    assert not classes["train"] & classes["val"] and not classes["train"] & classes["test"]
    assert not classes["val"] & classes["test"]
    assert parts == split_by_labels(feature_set)  # deterministic
    assert resolve_split(feature_set, None).name is None


def test_the_split_recorded_by_stage_one_is_the_default(tmp_path):
    split = write_split_lists(tmp_path / "split", CLASSES, VIDEOS, PARTS)
    location = write_synthetic_store(
        tmp_path / "feats.zarr", classes=CLASSES, videos_per_class=VIDEOS, split=str(split)
    )
    source = resolve_split(open_feature_set(location), None)
    assert source.name == str(split)
    assert {entry.label for entry in source.parts["val"]} == {"class_006", "class_007", "class_008"}


def test_episode_files_round_trip_and_are_checked(store, tmp_path):
    feature_set, split = store
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "train")
    episodes = EpisodeSampler(pool, way=3, shot=2, queries=1).episodes(10, seed=1)
    path = tmp_path / "episodes.json"
    save_episodes(path, pool, [EpisodeSet(3, 2, 1, episodes)], seed=1)
    (loaded,) = load_episodes(path, pool)
    assert (loaded.way, loaded.shot, loaded.queries) == (3, 2, 1)
    for a, b in zip(episodes, loaded.episodes, strict=True):
        assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
        assert np.array_equal(a.classes, b.classes)

    data = json.loads(path.read_text())
    bad = tmp_path / "bad.json"
    data["settings"][0]["episodes"][0]["support"][0] = "../../etc/passwd"
    bad.write_text(json.dumps(data))
    with pytest.raises(EpisodeError, match="not a usable train video"):
        load_episodes(bad, pool)
    data = json.loads(path.read_text())
    episode = data["settings"][0]["episodes"][0]
    episode["support"][0], episode["query"][-1] = episode["query"][-1], episode["support"][0]
    bad.write_text(json.dumps(data))
    with pytest.raises(EpisodeError, match="support videos are not 2 of each"):
        load_episodes(bad, pool)
    bad.write_text("{not json")
    with pytest.raises(EpisodeError, match="cannot read episode file"):
        load_episodes(bad, pool)
    bad.write_text(json.dumps({"format": 1, "settings": [{"way": 0, "episodes": []}]}))
    with pytest.raises(EpisodeError, match="way must be a positive integer"):
        load_episodes(bad, pool)
    with pytest.raises(EpisodeError, match="cannot read episode file"):
        load_episodes(tmp_path / "missing.json", pool)


def test_videos_of_shards_not_extracted_yet_are_skipped(tmp_path):
    location = write_synthetic_store(
        tmp_path / "feats.zarr", classes=CLASSES, videos_per_class=VIDEOS, shard_size=6,
        pending_shards=[9],
    )  # fmt: skip
    split = write_split_lists(tmp_path / "split", CLASSES, VIDEOS, PARTS)
    feature_set = open_feature_set(location)
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    assert pool.classes == ["class_010", "class_011"] and pool.unusable == VIDEOS
    assert "6 failed or not extracted" in pool.summary()
