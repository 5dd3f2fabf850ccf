"""Episode files as other code bases use them: the documented schema, and published files whose
videos come in any order and without class names (docs/EPISODES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
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
)
from sact.store.backends import open_feature_set
from sact.testing.stores import write_split_lists, write_synthetic_store

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "episodes.schema.json"
CLASSES, VIDEOS = 9, 5
PARTS = {"train": range(0, 3), "val": range(3, 6), "test": range(6, 9)}
WAY, SHOT, QUERY = 3, 2, 2


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A test pool and a file of 20 episodes sact wrote for it."""
    folder = tmp_path_factory.mktemp("episode-files")
    location = write_synthetic_store(
        folder / "feats.zarr", classes=CLASSES, videos_per_class=VIDEOS
    )
    split = write_split_lists(folder / "split", CLASSES, VIDEOS, PARTS)
    feature_set = open_feature_set(location)
    pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "test")
    episodes = EpisodeSampler(pool, way=WAY, shot=SHOT, queries=QUERY).episodes(20, seed=3)
    path = folder / "episodes.json"
    save_episodes(path, pool, [EpisodeSet(WAY, SHOT, QUERY, episodes)], split="test", seed=3)
    return pool, episodes, path


def by_class(pool, episode) -> dict[str, tuple[set[str], set[str]]]:
    """Each class of an episode with its support and query video ids."""
    return {
        pool.classes[c]: (
            {pool.video_ids[p] for p in episode.support if pool.labels[p] == pool.classes[c]},
            {pool.video_ids[p] for p in episode.query if pool.labels[p] == pool.classes[c]},
        )
        for c in episode.classes
    }


def test_sacts_episode_files_follow_the_documented_schema(written) -> None:
    _, _, path = written
    jsonschema.validate(json.loads(path.read_text()), json.loads(SCHEMA.read_text()))


def test_a_published_file_in_any_order_without_classes_scores_the_same_episodes(
    written, tmp_path: Path
) -> None:
    pool, episodes, path = written
    rng = np.random.default_rng(0)
    data = json.loads(path.read_text())
    for episode in data["settings"][0]["episodes"]:
        del episode["classes"]
        episode["support"] = list(rng.permutation(episode["support"]))
        episode["query"] = list(rng.permutation(episode["query"]))
    published = tmp_path / "published.json"
    published.write_text(json.dumps(data))
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    (loaded,) = load_episodes(published, pool)
    assert (loaded.way, loaded.shot, loaded.queries) == (WAY, SHOT, QUERY)
    for original, read in zip(episodes, loaded.episodes, strict=True):
        assert by_class(pool, read) == by_class(pool, original)
        labels = [pool.labels[p] for p in read.support]  # class-major, in the label order
        assert labels == [pool.classes[c] for c in read.classes for _ in range(SHOT)]


def test_published_files_are_checked(written, tmp_path: Path) -> None:
    pool, _, path = written
    bad = tmp_path / "bad.json"

    def refused(change, match: str) -> None:
        data = json.loads(path.read_text())
        change(data["settings"][0]["episodes"][0])
        bad.write_text(json.dumps(data))
        with pytest.raises(EpisodeError, match=match):
            load_episodes(bad, pool)

    def twice(episode):
        episode["query"][0] = episode["support"][0]

    def unbalanced(episode):
        other = [v for v in pool.video_ids if v not in episode["support"] + episode["query"]]
        first_class = pool.labels[pool.position_of[episode["support"][0]]]
        same = [v for v in other if pool.labels[pool.position_of[v]] == first_class]
        episode["support"][-1] = same[0]  # three of the first class, one of the last

    refused(twice, "appears twice")
    refused(unbalanced, "support videos are not 2 of each")
    refused(lambda episode: episode.update(classes=episode["classes"][:2]), "classes must list")
    refused(lambda episode: episode.update(classes=["x", "y", "z"]), "'x' is not in the test")
