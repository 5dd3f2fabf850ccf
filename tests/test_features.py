"""Split features: in memory or streamed, the same tensors; segment sampling; ordered prefetch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sact.extract.store import open_feature_set
from sact.fewshot.episodes import build_pool, resolve_split
from sact.fewshot.features import (
    FeatureError,
    Prefetcher,
    SplitFeatures,
    default_cache_gb,
    segment_frames,
)
from sact.testing.stores import write_split_lists, write_synthetic_store

CLASSES, VIDEOS, STORED_FRAMES = 9, 4, 8
PARTS = {"train": range(0, 5), "val": range(5, 7), "test": range(7, 9)}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    location = write_synthetic_store(
        folder / "feats.zarr",
        classes=CLASSES,
        videos_per_class=VIDEOS,
        frames=STORED_FRAMES,
        shard_size=4,
    )
    split = write_split_lists(folder / "split", CLASSES, VIDEOS, PARTS)
    feature_set = open_feature_set(location)
    return feature_set, build_pool(feature_set, resolve_split(feature_set, str(split)), "train")


def test_segment_centers_and_random_offsets_stay_in_their_segment():
    assert segment_frames(8, 4, 2).tolist() == [[1, 3, 5, 7], [1, 3, 5, 7]]
    assert segment_frames(16, 4, 1).tolist() == [[2, 6, 10, 14]]
    assert segment_frames(10, 3, 1).tolist() == [[1, 5, 8]]
    assert segment_frames(4, 4, 1).tolist() == [[0, 1, 2, 3]]
    rng = np.random.default_rng(0)
    drawn = segment_frames(16, 4, 500, rng)  # (500, 4)
    for segment in range(4):
        assert set(drawn[:, segment].tolist()) == set(range(4 * segment, 4 * segment + 4))
    again = segment_frames(16, 4, 500, np.random.default_rng(0))
    assert np.array_equal(drawn, again)
    with pytest.raises(FeatureError, match="uses 8 frames but the store holds only 4"):
        segment_frames(4, 8, 1)


def test_memory_and_streaming_serve_the_same_tensors(pool):
    feature_set, train_pool = pool
    cpu = torch.device("cpu")
    in_memory = SplitFeatures(feature_set, train_pool, frames=4, device=cpu)
    streamed = SplitFeatures(feature_set, train_pool, frames=4, device=cpu, cache_gb=0.0)
    assert in_memory.in_memory and "in memory" in in_memory.where()
    assert not streamed.in_memory and "streamed" in streamed.where()
    positions = np.array([7, 0, 3, 19, 3])
    frames = segment_frames(STORED_FRAMES, 4, len(positions), np.random.default_rng(1))
    a, b = in_memory.videos(positions, frames), streamed.videos(positions, frames)
    assert a.shape == (5, 4, 4, 16) and a.dtype == torch.float16
    assert torch.equal(a, b)
    stored = feature_set.read(train_pool.store_indices[positions])  # (5, 8, P, D)
    expected = np.take_along_axis(stored, frames[:, :, None, None], axis=1)
    assert np.array_equal(a.numpy(), expected)


def test_more_model_frames_than_stored_is_refused(pool):
    feature_set, train_pool = pool
    with pytest.raises(FeatureError, match="holds only 8"):
        SplitFeatures(feature_set, train_pool, frames=16, device=torch.device("cpu"))


def test_prefetcher_keeps_order_and_draws_items_in_the_calling_thread():
    caller = threading.get_ident()
    drawn_in = []

    def items():
        for number in range(20):
            drawn_in.append(threading.get_ident())
            yield number

    results = list(Prefetcher(workers=3, depth=4).map(lambda n: n * n, items()))
    assert results == [n * n for n in range(20)]
    assert set(drawn_in) == {caller}
    with pytest.raises(FeatureError):
        Prefetcher(workers=0, depth=1)


def test_prefetcher_passes_worker_errors_on():
    def explode(number):
        if number == 3:
            raise ValueError("bad item")
        return number

    with pytest.raises(ValueError, match="bad item"):
        list(Prefetcher(workers=2, depth=2).map(explode, range(10)))


def test_default_cache_budget_comes_from_available_memory():
    assert default_cache_gb() > 0
