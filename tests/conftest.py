"""Shared fixtures, built from the test data in ``sact.testing``: tiny synthetic videos (real h264
mp4 and vp9 webm files encoded with PyAV), a frame folder, corrupt files, one synthetic feature
store, and a local S3 server. Session-scoped and small so every test module can use them cheaply;
copy them before modifying anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sact.common.errors import Interrupted
from sact.fewshot.training import Trainer
from sact.testing.stores import write_split_lists, write_synthetic_store
from sact.testing.videos import write_corrupt_files, write_video_folder
from tests.faults.s3 import local_s3_server, make_bucket, s3_environment


@pytest.fixture(scope="session")
def _session_torch_threads() -> int:
    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _torch_threads_restored(_session_torch_threads):
    """Every test ends with torch's thread count back at the session's. CPU results can depend on
    it in the last bits, and tests compare in-process runs with `sact` subprocesses bit for bit."""
    yield
    torch.set_num_threads(_session_torch_threads)


@pytest.fixture
def ctrl_c_at_step() -> Callable[[int], AbstractContextManager[None]]:
    """`with ctrl_c_at_step(7): train(...)`: training raises KeyboardInterrupt, as Ctrl-C does,
    when step 7 begins, and the block must end in `Interrupted`; the step is as it was after."""

    @contextmanager
    def interrupted_at(step: int) -> Iterator[None]:
        original_step = Trainer.train_step

        def step_or_ctrl_c(self: Trainer, tasks: Any) -> Any:
            if self.step == step - 1:  # `self.step` counts the steps done
                raise KeyboardInterrupt
            return original_step(self, tasks)

        with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
            patch.setattr(Trainer, "train_step", step_or_ctrl_c)
            yield

    return interrupted_at


@pytest.fixture
def one_torch_thread() -> None:
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sact.testing.videos.VIDEO_FRAMES`` as files. Read-only by convention: copy it before
    changing anything."""
    return write_video_folder(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="session")
def corrupt_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corrupt_files(tmp_path_factory.mktemp("corrupt"))


@pytest.fixture
def mixed_folder(tmp_path: Path, video_folder: Path, corrupt_files: dict[str, Path]) -> Path:
    """A writable copy of `video_folder` plus every corrupt file in a class folder `broken`."""
    root = tmp_path / "videos"
    shutil.copytree(video_folder, root)
    (root / "broken").mkdir()
    for path in corrupt_files.values():
        shutil.copy(path, root / "broken" / path.name)
    return root


@dataclass(frozen=True)
class SyntheticStore:
    """A labelled synthetic feature store (``sact.testing.stores``) and its split lists."""

    location: str  # the store, feature set "synthetic"
    split: str  # folder of {train,val,test}list01.txt, also recorded in the store's attrs
    options: dict[str, Any]  # what write_synthetic_store wrote it with

    @property
    def classes(self) -> int:
        return int(self.options["classes"])

    @property
    def videos_per_class(self) -> int:
        return int(self.options["videos_per_class"])

    def write_like(self, location: Path, **changes: Any) -> str:
        """Another store of the same videos and shape, but for ``changes``."""
        return write_synthetic_store(location, **{**self.options, **changes})


STORE_PARTS = {"train": range(0, 20), "val": range(20, 25), "test": range(25, 30)}


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    """30 classes of 6 videos, 8 stored frames, shards of 8 videos; training, evaluation and the
    stage-2 commands read it, none writes into it."""
    folder = tmp_path_factory.mktemp("synthetic-store")
    split = str(write_split_lists(folder / "split", 30, 6, STORE_PARTS))
    options = {"classes": 30, "videos_per_class": 6, "frames": 8, "shard_size": 8, "split": split}
    return SyntheticStore(write_synthetic_store(folder / "feats.zarr", **options), split, options)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3 server for the session; this process (and its children) point at it."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with local_s3_server() as endpoint, pytest.MonkeyPatch.context() as patch:
        for name, value in s3_environment(endpoint).items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server
    return make_bucket()
