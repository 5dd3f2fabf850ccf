"""A store read while it is written, by runs and readers at once: what the scenarios of
sact.testing.shared_store found."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from sact.extract.feature_set import FeatureSet


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
