"""The feature store layer on every kind of store a lab uses: a local directory, a local directory
whose files are read-only, a real S3-compatible server, and an HDF5 copy made by ``sact export``.

The stores are written through ``FeatureSetWriter`` directly, so these tests need no backbone."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import pytest

from sact.store.backends import list_feature_sets, open_feature_set
from sact.store.feature_set import FeatureStoreError, VideoRecord
from sact.store.hdf5 import export_hdf5
from sact.store.zarr_store import FeatureSetWriter, ShardResult, open_root
from tests.faults.s3 import make_bucket

FRAMES, PATCHES, DIM, GRID = 4, 4, 8, (2, 2)
EPISODES_PER_READER = 5


@dataclass
class Expected:
    """What a feature set was written with, to compare reads against."""

    video_ids: list[str]
    labels: list[str]
    errors: list[str]
    features: np.ndarray  # (N, T, P, D) float16
    frame_index: np.ndarray  # (N, T)
    num_frames: np.ndarray  # (N,)


def videos(count: int, *, start: int = 0, classes: int = 3) -> list[VideoRecord]:
    return [
        VideoRecord(
            f"v{index:03d}", f"class {index % classes}/v{index:03d}.mp4", f"class {index % classes}"
        )
        for index in range(start, start + count)
    ]


def identity(dim: int = DIM) -> dict[str, object]:
    return {"backbone": "test-backbone", "frames": FRAMES, "dim": dim, "input_size": 32}


def open_writer(
    location: str, name: str, records: list[VideoRecord], *, dim: int = DIM, shard_size: int = 4
) -> FeatureSetWriter:
    return FeatureSetWriter.create_or_open(
        open_root(location, mode="a"),
        name,
        identity=identity(dim),
        provenance={"created": "test"},
        videos=records,
        frames=FRAMES,
        patches=PATCHES,
        dim=dim,
        grid=GRID,
        shard_size=shard_size,
    )


def computed_shard(
    writer: FeatureSetWriter, shard: int, *, seed: int, failed: frozenset[str] = frozenset()
) -> ShardResult:
    """A shard's 'features': random values from ``seed``, a video in ``failed`` gets an error."""
    records = writer.records(shard)
    rng = np.random.default_rng([seed, shard])
    count = len(records)
    return ShardResult(
        features=rng.standard_normal((count, FRAMES, PATCHES, writer.features.shape[3])).astype(
            np.float16
        ),
        frame_index=rng.integers(0, 50, size=(count, FRAMES)).astype(np.int32),
        num_frames=np.full(count, 50, dtype=np.int32),
        errors=["cannot decode" if record.video_id in failed else "" for record in records],
    )


def write_all(
    writer: FeatureSetWriter, *, seed: int = 0, failed: frozenset[str] = frozenset()
) -> None:
    for shard in writer.shards_to_do():
        writer.write_shard(shard, computed_shard(writer, shard, seed=seed, failed=failed))


def read_expected(writer: FeatureSetWriter) -> Expected:
    group = writer.group
    return Expected(
        video_ids=[str(v) for v in group["video_id"][:]],
        labels=[str(v) for v in group["label"][:]],
        errors=[str(v) for v in group["error"][:]],
        features=np.asarray(group["features"][:]),
        frame_index=np.asarray(group["frame_index"][:]),
        num_frames=np.asarray(group["num_frames"][:]),
    )


def build_store(location: str) -> dict[str, Expected]:
    """Two feature sets (two 'backbones') in one store, one with a failed video."""
    first = open_writer(location, "tiny-a", videos(10))
    write_all(first, failed=frozenset({"v005"}))
    second = open_writer(location, "tiny-b", videos(5), dim=6, shard_size=2)
    write_all(second, seed=1)
    return {"tiny-a": read_expected(first), "tiny-b": read_expected(second)}


def tree_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def set_writable(folder: Path, writable: bool) -> None:
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


STORE_KINDS = ["local", "read-only", "s3", "hdf5"]


@pytest.fixture(scope="module", params=STORE_KINDS)
def stored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict]]:
    """(location to read from, what each feature set holds) for each kind of store; built once
    per module, since the tests only read."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    local = tmp_path / "feats.zarr"
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        location = f"{make_bucket()}/feats.zarr"
        yield location, build_store(location)
        return
    expected = build_store(str(local))
    if request.param == "local":
        yield str(local), expected
    elif request.param == "hdf5":
        destination = tmp_path / "feats.h5"
        export_hdf5(str(local), destination)
        yield str(destination), expected
    else:
        set_writable(local, False)
        before = tree_snapshot(local)
        try:
            yield str(local), expected
            # Reading never writes, not even metadata (root ignores permissions, so check this too).
            assert tree_snapshot(local) == before
        finally:
            set_writable(local, True)


def test_reads_back_what_was_written(stored: tuple[str, dict]) -> None:
    location, expected = stored
    assert list_feature_sets(location) == ["tiny-a", "tiny-b"]
    for name, want in expected.items():
        feature_set = open_feature_set(location, name)
        assert feature_set.video_ids == want.video_ids
        assert feature_set.labels == want.labels
        assert feature_set.errors == want.errors
        assert feature_set.done.all()
        np.testing.assert_array_equal(feature_set.num_frames, want.num_frames)
        assert feature_set.attrs["backbone"] == "test-backbone"
        assert feature_set.grid == GRID
        rng = np.random.default_rng(0)
        indices = rng.integers(0, len(want.video_ids), size=12)  # unsorted, with repeats
        np.testing.assert_array_equal(feature_set.read(indices), want.features[indices])
        np.testing.assert_array_equal(
            feature_set.read_frame_index(indices), want.frame_index[indices]
        )
    tiny_a = open_feature_set(location, "tiny-a")
    assert tiny_a.counts() == {"videos": 10, "done": 9, "failed": 1, "pending": 0}
    assert (tiny_a.frames, tiny_a.patches, tiny_a.dim, tiny_a.shard_size) == (4, 4, 8, 4)


def test_names_the_choices(stored: tuple[str, dict]) -> None:
    location, _ = stored
    with pytest.raises(FeatureStoreError, match=r"several feature sets.*tiny-a, tiny-b"):
        open_feature_set(location)
    with pytest.raises(FeatureStoreError, match="no feature set 'nope'"):
        open_feature_set(location, "nope")


def _episode_checksums(location: str, seed: int) -> list[float]:
    """What one trainer process reads: 5 random 'episodes' of 6 videos, summed."""
    feature_set = open_feature_set(location, "tiny-a")
    rng = np.random.default_rng(seed)
    return [
        float(
            feature_set.read(rng.choice(len(feature_set), 6, replace=False))
            .astype(np.float64)
            .sum()
        )
        for _ in range(EPISODES_PER_READER)
    ]


def _expected_checksums(want: Expected, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [
        float(
            want.features[rng.choice(len(want.video_ids), 6, replace=False)]
            .astype(np.float64)
            .sum()
        )
        for _ in range(EPISODES_PER_READER)
    ]


def test_many_readers_at_once(stored: tuple[str, dict]) -> None:
    location, expected = stored
    seeds = [0, 1, 2, 3]
    with ThreadPoolExecutor(4) as threads:
        in_threads = list(threads.map(_episode_checksums, [location] * 4, seeds))
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as processes:
        in_processes = list(processes.map(_episode_checksums, [location] * 2, seeds[:2]))
    want = [_expected_checksums(expected["tiny-a"], seed) for seed in seeds]
    assert in_threads == want
    assert in_processes == want[:2]


def test_missing_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match="no feature store at"):
        open_feature_set(str(tmp_path / "absent.zarr"))
    with pytest.raises(FeatureStoreError, match="no HDF5 file"):
        open_feature_set(str(tmp_path / "absent.h5"))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(FeatureStoreError, match="not a sact feature store in HDF5"):
        open_feature_set(str(plain))
    with pytest.raises(FeatureStoreError, match="HDF5 copy of a store: it is read-only"):
        open_root(str(plain), mode="a")


def test_hdf5_export_has_same_arrays_and_attributes(tmp_path: Path) -> None:
    import zarr

    local = tmp_path / "feats.zarr"
    build_store(str(local))
    destination = tmp_path / "feats.h5"
    summary = export_hdf5(str(local), destination, feature_sets=["tiny-a"])
    assert summary["sets"]["tiny-a"]["failed"] == 1
    root = zarr.open_group(str(local), mode="r")
    with h5py.File(destination, "r") as handle:
        assert list(handle) == ["tiny-a"]
        group = handle["tiny-a"]
        assert group["features"].chunks == (1, FRAMES, PATCHES, DIM)
        for name in ("features", "frame_index", "num_frames", "done", "video_id", "error"):
            stored_values = root["tiny-a"][name][:]
            copied = group[name].asstr()[:] if group[name].dtype.kind == "O" else group[name][:]
            np.testing.assert_array_equal(np.asarray(copied), np.asarray(stored_values))
            assert group[name].dtype.kind == "O" or group[name].dtype == stored_values.dtype
    assert open_feature_set(str(destination)).attrs == open_feature_set(str(local), "tiny-a").attrs
    with pytest.raises(FeatureStoreError, match="exists; pass --overwrite"):
        export_hdf5(str(local), destination)
    export_hdf5(str(local), destination, overwrite=True)
    assert list_feature_sets(str(destination)) == ["tiny-a", "tiny-b"]
    assert not any(path.name.endswith(".partial") for path in tmp_path.iterdir())


def test_append_leaves_done_shards_untouched(tmp_path: Path) -> None:
    location = str(tmp_path / "feats.zarr")
    writer = open_writer(location, "tiny-a", videos(10))
    write_all(writer, seed=0)
    before = read_expected(writer)
    group_folder = tmp_path / "feats.zarr" / "tiny-a"

    def full_shard_files() -> dict[str, tuple[int, int]]:
        # Chunk keys are <array>/c/<video block>/...: blocks 0 and 1 are the two full shards.
        return {
            key: value
            for key, value in tree_snapshot(group_folder).items()
            if key.split("/")[1:3] in (["c", "0"], ["c", "1"])
        }

    untouched = full_shard_files()
    # (error chunks hold only the fill value "", so zarr does not write them)
    assert {key.split("/")[0] for key in untouched} >= {"features", "done", "video_id"}

    grown = open_writer(location, "tiny-a", videos(15))  # the same 10 plus 5 new
    assert len(grown) == 15
    # The partly filled last shard (videos 8, 9 done) takes the new videos 10, 11.
    assert grown.shards_to_do() == [2, 3]
    write_all(grown, seed=99)  # different values: kept videos must not take them
    after = read_expected(grown)
    assert full_shard_files() == untouched
    np.testing.assert_array_equal(after.features[:10], before.features)
    np.testing.assert_array_equal(after.frame_index[:10], before.frame_index)
    assert after.video_ids[:10] == before.video_ids
    assert open_feature_set(location).counts()["done"] == 15
    assert open_writer(location, "tiny-a", videos(15)).append(videos(15)) == 0


def test_retry_rewrites_only_the_failed_video(tmp_path: Path) -> None:
    location = str(tmp_path / "feats.zarr")
    writer = open_writer(location, "tiny-a", videos(8))
    write_all(writer, seed=0, failed=frozenset({"v005"}))
    before = read_expected(writer)
    assert writer.shards_to_do(retry_failed=False) == []
    assert writer.shards_to_do() == [1]
    write_all(writer, seed=7)
    after = read_expected(writer)
    assert after.errors == [""] * 8
    unchanged = [index for index in range(8) if index != 5]
    np.testing.assert_array_equal(after.features[unchanged], before.features[unchanged])
    assert not np.array_equal(after.features[5], before.features[5])


def test_a_different_config_never_writes_into_a_feature_set(tmp_path: Path) -> None:
    location = str(tmp_path / "feats.zarr")
    write_all(open_writer(location, "tiny-a", videos(4)))
    with pytest.raises(FeatureStoreError, match=r"exists with a different config.*dim: stored 8"):
        open_writer(location, "tiny-a", videos(4), dim=16)


def test_s3_errors_are_one_line(s3_server: str) -> None:
    with pytest.raises(FeatureStoreError, match="no feature store at s3://"):
        open_feature_set("s3://sact-no-such-bucket/feats.zarr")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    location = tmp_path / "feats.zarr"
    build_store(str(location))
    set_writable(location, False)
    try:
        with pytest.raises((FeatureStoreError, PermissionError)):
            write_all(open_writer(str(location), "tiny-a", videos(12)))
    finally:
        set_writable(location, True)
