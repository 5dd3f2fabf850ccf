"""A store read while it is written, by runs and readers at once (tests.faults.shared_store): the
scenarios, and what they found."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from sact.common.claims import ClaimBook, RunInfo
from sact.extract.clips import ClaimedOrder
from sact.extract.shard_writer import shard_topic
from sact.store.feature_set import FeatureSet, VideoRecord
from sact.store.zarr_store import FeatureSetWriter, ShardResult, open_root
from tests.faults.shared_store import flaky_object_storage, writers_and_readers


class ArraysOfOneFeatureSet(FeatureSet):
    def size_bytes(self) -> int | None:
        return None


class WrittenWhileRead(Mapping[str, np.ndarray]):
    """A one-video shard's arrays, whose writer finishes it (the video failed) right after the
    reader's ``reads``-th read: the arrays read afterwards hold the finished values."""

    def __init__(self, reads: int) -> None:
        self.arrays = {
            "features": np.zeros((1, 2, 1, 4), dtype=np.float16),
            "video_id": np.array(["v0"], dtype=object), "path": np.array(["v0.mp4"], dtype=object),
            "label": np.array([""], dtype=object), "num_frames": np.zeros(1, dtype=np.int32),
            "frame_index": np.full((1, 2), -1, dtype=np.int32),
            "error": np.array([""], dtype=object), "done": np.zeros(1, dtype=bool),
        }  # fmt: skip
        self.reads_left = reads

    def __getitem__(self, name: str) -> np.ndarray:
        value = self.arrays[name].copy()
        self.reads_left -= 1
        if self.reads_left == 0:
            self.arrays["error"][0] = "not a readable video"
            self.arrays["done"][0] = True  # the writer's last step
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def test_a_reader_never_takes_a_video_finished_while_it_reads_for_a_usable_one() -> None:
    # Found by the readers of writers_and_readers on S3: the reader read `error` (still "") before
    # the writer finished the shard and `done` (now true) after, and took a failed video for a
    # usable one with zeros for features. The done markers are now read first.
    attrs = {"grid": [1, 1], "shard_size": 1}
    for reads in range(1, 9):  # the writer finishes after the reader's first, second, ... read
        read = ArraysOfOneFeatureSet(WrittenWhileRead(reads), attrs, name="f", location="mem")
        assert not read.usable[0], f"the writer finished after read {reads}"


def one_video_shards(location: str, count: int) -> FeatureSetWriter:
    videos = [VideoRecord(f"v{i}", f"v{i}.mp4", "") for i in range(count)]
    return FeatureSetWriter.create_or_open(
        open_root(location, mode="a"), "f", identity={"backbone": "x"}, provenance={},
        videos=videos, frames=1, patches=1, dim=1, grid=(1, 1), shard_size=1,
    )  # fmt: skip


def failed(count: int) -> ShardResult:
    return ShardResult(
        features=np.zeros((count, 1, 1, 1), dtype=np.float16),
        frame_index=np.full((count, 1), -1, dtype=np.int32),
        num_frames=np.zeros(count, dtype=np.int32),
        errors=["not a readable video"] * count,
    )


def run_started_now(name: str) -> RunInfo:
    """A run of this process, as if its command had started now."""
    return RunInfo(name, socket.gethostname(), os.getpid(), time.time())


def test_a_failure_another_run_just_recorded_is_not_retried_alongside(tmp_path: Path) -> None:
    # Found by writers_and_readers: three runs at once extracted 16 videos for 12, each run
    # redoing the shards of the broken files that another run had just recorded. A command's
    # run starts when its process did (process_start_time), not when it had loaded its backbone.
    location = str(tmp_path / "feats.zarr")
    writer = one_video_shards(location, 2)
    ours = ClaimBook(open_root(location, mode="a"), "f", run=run_started_now("ours"))
    theirs = ClaimBook(open_root(location, mode="a"), "f", run=run_started_now("theirs"))
    for shard in (0, 1):  # the other run records both failures after this run started
        assert theirs.try_claim(shard_topic(shard))
        writer.write_shard(shard, failed(1))
        theirs.release(shard_topic(shard))
    alongside = ClaimedOrder(writer, [0, 1], ours, on_skip=lambda count: None)
    assert list(alongside) == []
    later = ClaimBook(open_root(location, mode="a"), "f", run=run_started_now("later"))
    next_run = ClaimedOrder(writer, [0, 1], later, on_skip=lambda count: None)
    assert list(next_run) == [0, 1]  # the next run retries them


@pytest.mark.slow
def test_three_writers_and_two_readers_on_local_disk(tmp_path: Path) -> None:
    injection = writers_and_readers(tmp_path, seed=0, on_s3=False, good_videos=4)
    assert injection.expected and injection.lost == 0, injection


@pytest.mark.slow
def test_flaky_object_storage_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    injection = flaky_object_storage(tmp_path, seed=0, good_videos=2)
    assert injection.expected and injection.lost == 0, injection
