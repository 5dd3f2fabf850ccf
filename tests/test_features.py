"""Split features: every tier serves the same tensors, the tiers are planned from the memory there
is and --cache-gb; segment sampling; ordered prefetch."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from sact.fewshot import features as features_module
from sact.fewshot.episodes import build_pool, resolve_split
from sact.fewshot.features import (
    FeatureError,
    Prefetcher,
    SplitFeatures,
    plan_cache,
    segment_frames,
)
from sact.store.backends import open_feature_set
from sact.store.feature_set import CANONICAL
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


def test_every_tier_and_any_mix_of_them_serve_the_same_tensors(pool):
    feature_set, train_pool = pool
    cpu = torch.device("cpu")
    everything = SplitFeatures(feature_set, train_pool, frames=4, device=cpu)
    assert everything.in_memory and everything.plan.on_device == len(train_pool) == 20
    base = everything.plan
    mixes = {  # (on the device, in host memory): the rest is read from the store
        "store": (0, 0),
        "host": (0, 20),
        "thirds": (7, 6),
    }
    positions = np.array([7, 0, 3, 19, 3, 12, 15])
    frames = segment_frames(STORED_FRAMES, 4, len(positions), np.random.default_rng(1))
    expected = everything.videos(positions, frames)
    assert expected.shape == (7, 4, 4, 16) and expected.dtype == torch.float16
    stored = feature_set.read(train_pool.store_indices[positions])  # (7, 8, P, D)
    assert np.array_equal(
        expected.numpy(), np.take_along_axis(stored, frames[:, :, None, None], axis=1)
    )
    for name, (on_device, on_host) in mixes.items():
        plan = replace(base, on_device=on_device, on_host=on_host)
        tiered = SplitFeatures(feature_set, train_pool, frames=4, device=cpu, plan=plan)
        assert not tiered.in_memory
        assert torch.equal(tiered.videos(positions, frames), expected), name


def test_with_views_the_tiers_hold_video_views_and_serve_each_in_its_view(tmp_path):
    """Training draws a stored view per video (docs/STORE.md): the plan counts (view, video)
    pairs, and a tier boundary inside a view serves the same tensors as the store."""
    views = ("crop-tl", "jitter_d0")
    location = write_synthetic_store(
        tmp_path / "feats.zarr",
        classes=CLASSES,
        videos_per_class=VIDEOS,
        frames=STORED_FRAMES,
        shard_size=4,
        views=views,
    )
    split = write_split_lists(tmp_path / "split", CLASSES, VIDEOS, PARTS)
    feature_set = open_feature_set(location)
    train_pool = build_pool(feature_set, resolve_split(feature_set, str(split)), "train")
    names = (CANONICAL, *views)
    cpu = torch.device("cpu")
    everything = SplitFeatures(feature_set, train_pool, frames=4, device=cpu, views=names)
    assert everything.in_memory and everything.plan.video_views == 3 * 20
    assert "train features, 20 videos x 3 views = 60 video views" in everything.where()
    positions = np.array([7, 0, 3, 19, 3, 12, 15, 7])
    in_view = np.array([0, 2, 1, 1, 0, 2, 2, 1])  # indices into names
    frames = segment_frames(STORED_FRAMES, 4, len(positions), np.random.default_rng(1))
    expected = everything.videos(positions, frames, in_view)
    for row, (position, view) in enumerate(zip(positions, in_view, strict=True)):
        stored = feature_set.read(train_pool.store_indices[[position]], names[view])
        assert np.array_equal(expected[row].numpy(), stored[0, frames[row]])
    for on_device, on_host in ((0, 0), (0, 60), (25, 20), (7, 6)):
        plan = replace(everything.plan, on_device=on_device, on_host=on_host)
        tiered = SplitFeatures(
            feature_set, train_pool, frames=4, device=cpu, plan=plan, views=names
        )
        assert torch.equal(tiered.videos(positions, frames, in_view), expected)


def test_the_plan_fills_the_device_then_the_host_within_cache_gb(monkeypatch):
    gib = 1024**3
    monkeypatch.setattr(features_module, "available_host_bytes", lambda: 8 * gib)
    monkeypatch.setattr(features_module, "free_device_bytes", lambda device: 10 * gib)
    cuda = torch.device("cuda:0")
    video = gib // 10

    def plan(**options):
        return plan_cache(part="train", videos=200, video_bytes=video, device=cuda, readers=3,
                          **options)  # fmt: skip

    # 75% of the GPU's 10 GB free, then half of the host's 8 GB available, then the store
    assert (plan().on_device, plan().on_host, plan().from_store) == (75, 40, 85)
    # --cache-gb caps both memory tiers together, the GPU's first
    capped = plan(cache_gb=2.0)
    assert (capped.on_device, capped.on_host, capped.from_store) == (20, 0, 180)
    assert plan(cache_gb=9.0).on_host == 15
    assert plan(cache_gb=0.0).from_store == 200
    # a split kept off the GPU (validation) goes to the host
    assert (plan(device_tier=False).on_device, plan(device_tier=False).on_host) == (0, 40)
    described = capped.describe()
    assert "20 on cuda:0 (2.00 GB), 0 in host memory (0.00 GB)" in described
    assert "180 read from the store by 3 threads" in described and "--cache-gb 2" in described
    # on the CPU the device is the host: one memory tier, half of what is available
    on_cpu = plan_cache(part="val", videos=200, video_bytes=video, device=torch.device("cpu"),
                        readers=1)  # fmt: skip
    assert (on_cpu.on_device, on_cpu.on_host, on_cpu.from_store) == (40, 0, 160)


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
