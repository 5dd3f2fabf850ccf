"""A store on object storage, end to end: extract real videos into ``s3://bucket/feats.zarr`` on a
real S3-compatible server (moto's server mode on 127.0.0.1, reached over HTTP through s3fs), then
train and evaluate from it, list it with ``sact info`` and copy it to HDF5 with ``sact export``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sact.cli import app
from sact.demo.synthetic import SyntheticDatasetConfig, make_synthetic_dataset
from sact.extract.config import ExtractConfig
from sact.extract.pipeline import run_extraction
from sact.fewshot.evaluation import EvalConfig, Evaluation, evaluate
from sact.fewshot.training import TrainConfig, train
from sact.store.backends import list_feature_sets, open_feature_set
from sact.store.zarr_store import zarr_feature_set_names
from sact.testing.extraction import tiny_config

# Two classes in each split part: enough for 2-way episodes, small enough to extract in seconds.
CLASSES = (
    "slide-right",
    "slide-up",
    "slide-down",
    "slide-up-right",
    "slide-left",
    "slide-down-left",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    config = SyntheticDatasetConfig(
        root=tmp_path_factory.mktemp("synthetic"),
        videos_per_class=3,
        frames=8,
        size=32,
        classes=CLASSES,
    )
    return make_synthetic_dataset(config)


def extract_config(dataset, out: str, **options) -> ExtractConfig:
    """The tests' tiny extraction of the dataset's split, 4 videos per batch and per shard."""
    return tiny_config(
        dataset.videos, out, split=str(dataset.splits), batch_size=4, shard_size=4, **options
    )


@pytest.mark.slow
def test_extract_train_evaluate_on_s3(dataset, s3_bucket: str, tmp_path: Path) -> None:
    url = f"{s3_bucket}/feats.zarr"
    summary = run_extraction(extract_config(dataset, url))
    assert (summary.videos, summary.done, summary.failed, summary.pending) == (18, 18, 0, 0)
    assert list_feature_sets(url) == ["tiny"]

    # The same extraction into a local store gives the same bytes.
    local = str(tmp_path / "feats.zarr")
    run_extraction(extract_config(dataset, local))
    remote_set, local_set = open_feature_set(url), open_feature_set(local)
    assert remote_set.video_ids == local_set.video_ids
    everything = np.arange(len(local_set))
    np.testing.assert_array_equal(remote_set.read(everything), local_set.read(everything))

    trained = train(
        TrainConfig(
            feats=url,
            split=str(dataset.splits),
            way=2,
            shot=1,
            query=1,
            d_k=16,
            iterations=2,
            warmup=0,
            tasks_per_batch=1,
            val_every=1,
            val_episodes=2,
            out=str(tmp_path / "run"),
            device="cpu",
            workers=1,
        )
    )
    assert trained.steps == 2

    def evaluated(feats: str, out: Path) -> Evaluation:
        return evaluate(
            EvalConfig(
                run=str(trained.run_dir),
                feats=feats,
                way=2,
                shots=(1,),
                query=1,
                episodes=4,
                device="cpu",
                workers=1,
                out=str(out),
            )
        )

    results = evaluated(url, tmp_path / "evaluation.json")
    scored = results.runs[str(trained.run_dir)]
    assert (scored.store, scored.feature_set, scored.videos) == (url, "tiny", 6)
    accuracy = results.settings[0].runs[str(trained.run_dir)].accuracy
    assert 0.0 <= accuracy <= 1.0

    runner = CliRunner()
    shown = runner.invoke(app, ["info", url, "--json"])
    assert shown.exit_code == 0, shown.output
    assert "tiny" in shown.output
    exported = runner.invoke(app, ["export", url, "--to", str(tmp_path / "feats.h5")])
    assert exported.exit_code == 0, exported.output
    shown_h5 = runner.invoke(app, ["info", str(tmp_path / "feats.h5"), "--json"])
    assert shown_h5.exit_code == 0, shown_h5.output
    listed = json.loads(shown_h5.stdout)["feature_sets"][0]
    assert (listed["name"], listed["counts"]["done"]) == ("tiny", 18)
    assert listed["size_bytes"] > 0
    copy = open_feature_set(str(tmp_path / "feats.h5"))
    np.testing.assert_array_equal(copy.read(everything), local_set.read(everything))
    assert copy.attrs == remote_set.attrs
    # Stage 2 takes the HDF5 copy as it takes the store: same episodes, same accuracy ...
    from_hdf5 = evaluated(str(tmp_path / "feats.h5"), tmp_path / "evaluation-h5.json")
    assert from_hdf5.settings[0].runs[str(trained.run_dir)].accuracy == accuracy
    # ... and trains from it.
    options = ["--way", "2", "--shot", "1", "--query", "1", "--d-k", "16", "--iterations", "1"]
    options += ["--val-every", "1", "--val-episodes", "2", "--device", "cpu"]
    options += ["--split", str(dataset.splits), "--out", str(tmp_path / "run-h5")]
    trained_h5 = runner.invoke(app, ["train", "--feats", str(tmp_path / "feats.h5"), *options])
    assert trained_h5.exit_code == 0, trained_h5.output


def test_bad_bucket_is_one_line(s3_server: str) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["info", "s3://sact-missing-bucket/feats.zarr"])
    assert shown.exit_code == 2
    assert "no feature store at s3://sact-missing-bucket/feats.zarr" in shown.output
    assert "Traceback" not in shown.output


def test_a_feature_set_created_later_is_seen_by_a_process_that_looked_before(
    s3_bucket: str,
) -> None:
    # Found by the flaky-storage scenario's readers (tests.faults.shared_store): fsspec kept the
    # first listing of the store, so a process that had looked at it before a feature set was
    # created (a notebook, a reader polling a store being extracted) never saw that feature set.
    location = f"{s3_bucket}/feats.zarr"

    def another_process_writes(name: str) -> None:
        write = "from sact.testing.stores import write_synthetic_store as write; import sys; "
        write += "write(sys.argv[1], name=sys.argv[2], classes=2, videos_per_class=2)"
        subprocess.run([sys.executable, "-c", write, location, name], check=True, timeout=120)

    another_process_writes("first")
    assert zarr_feature_set_names(location) == ["first"]
    another_process_writes("second")
    assert zarr_feature_set_names(location) == ["first", "second"]
