"""Silent corruption (tests.faults.corruption): a flipped byte in a feature chunk is reported when
read, listed by `sact info --verify` and redone alone by the next `sact extract`."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sact.cli import app
from sact.store.backends import open_feature_set
from sact.store.verify import mark_for_redo, verify_store
from sact.testing.damage import flip_byte
from sact.testing.stores import write_synthetic_store
from tests.faults.corruption import silent_corruption

runner = CliRunner()


def test_export_of_a_damaged_store_stops_in_one_line_and_skips_videos_marked_for_redo(
    tmp_path: Path,
) -> None:
    # Found by silent_corruption: `sact export` read the features array directly and died of
    # zarr's checksum ValueError (a traceback); once verify had marked the video pending, the
    # export still read its damaged chunk and died again.
    store = tmp_path / "feats.zarr"
    write_synthetic_store(store, classes=2, videos_per_class=4, shard_size=4)
    damaged_id = open_feature_set(str(store)).video_ids[5]
    flip_byte(store, "synthetic", 5)
    copy = tmp_path / "copy.h5"
    stopped = runner.invoke(app, ["export", str(store), "--to", str(copy)])
    assert stopped.exit_code == 2, stopped.output
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stopped.output, stopped.output
    assert f"features of video {damaged_id!r} (row 5)" in errors[0] and not copy.exists()
    mark_for_redo(str(store), verify_store(str(store)))
    exported = runner.invoke(app, ["export", str(store), "--to", str(copy)])
    assert exported.exit_code == 0, exported.output
    features = open_feature_set(str(store))
    with h5py.File(copy, "r") as handle:
        stored = handle["synthetic/features"][:]
        assert not handle["synthetic/done"][5]
    assert not stored[5].any()
    kept = np.flatnonzero(features.done)
    np.testing.assert_array_equal(stored[kept], features.read(kept))


@pytest.mark.slow
def test_a_flipped_byte_is_reported_listed_and_redone_alone(tmp_path: Path) -> None:
    (injection,) = silent_corruption(tmp_path, seed=0, good_videos=3)
    assert injection.expected and injection.lost == 0, injection
