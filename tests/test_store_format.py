"""Store format 2: format-1 stores still open (and grow views), checksums catch a flipped byte on
read, `sact info --verify` lists damaged videos and the next extraction redoes them.

The stores are written through ``FeatureSetWriter`` directly (or, for format 1, with plain zarr by
``format1_store``), so these tests need no backbone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store_docs import section_code

from sact.extract.views import parse_view
from sact.store.backends import open_feature_set
from sact.store.feature_set import CANONICAL, FeatureStoreError, VideoRecord
from sact.store.verify import MISSING, has_checksums, mark_for_redo, verify_store
from sact.store.zarr_store import FeatureSetWriter, ShardResult, open_root
from sact.testing.damage import chunk_file, flip_byte
from sact.testing.format1 import DIM, FRAMES, PATCHES, write_format1_store

SHARD = 4


def records(count: int) -> list[VideoRecord]:
    return [VideoRecord(f"v{i}", f"c{i % 2}/v{i}.mp4", f"c{i % 2}") for i in range(count)]


def result_for(writer: FeatureSetWriter, shard: int, *, seed: int = 0) -> ShardResult:
    count = len(writer.records(shard))
    rng = np.random.default_rng([seed, shard, len(writer.view)])
    features = np.maximum(rng.standard_normal((count, FRAMES, PATCHES, DIM)), 0)
    return ShardResult(
        features=features.astype(np.float16),
        frame_index=np.tile(np.arange(FRAMES, dtype=np.int32), (count, 1)),
        num_frames=np.full(count, FRAMES, dtype=np.int32),
        errors=[""] * count,
        crop_origin=None if writer.view == CANONICAL else np.zeros((count, 2), dtype=np.int32),
    )


def write_store(
    location: Path, *, videos: int = 10, views: tuple[str, ...] = (), name: str = "fs"
) -> None:
    """Feature set ``name``: the canonical view and ``views``, every shard written."""
    writer = FeatureSetWriter.create_or_open(
        open_root(str(location), mode="a"),
        name,
        identity={"backbone": "test", "frames": FRAMES, "dim": DIM},
        provenance={},
        videos=records(videos),
        frames=FRAMES,
        patches=PATCHES,
        dim=DIM,
        grid=(2, 2),
        shard_size=SHARD,
    )
    targets = [writer] + [
        writer.add_view(view, spec=parse_view(view).to_json(), provenance={}) for view in views
    ]
    for target in targets:
        for shard in target.shards_to_do():
            target.write_shard(shard, result_for(target, shard))


# ---- format 1 ----


def test_a_format_1_store_opens_reads_and_takes_views_without_touching_its_chunks(tmp_path):
    location = tmp_path / "old.zarr"
    written = write_format1_store(location)
    feature_set = open_feature_set(str(location))
    assert feature_set.view_names() == [CANONICAL]
    assert feature_set.video_ids == written["video_ids"]
    assert np.array_equal(feature_set.read(range(6)), written["features"])
    assert np.array_equal(feature_set.usable, [e == "" for e in written["errors"]])
    assert not has_checksums(feature_set.features)  # format 1: zstd, no checksum
    before = {path: path.read_bytes() for path in (location / "old").rglob("*") if path.is_file()}

    # a later sact adds a view: the root becomes format 2; no file of format 1 changes
    writer = FeatureSetWriter(open_root(str(location), mode="a")["old"])
    view = writer.add_view("jitter_d0", spec={"jitter": True}, provenance={})
    for shard in view.shards_to_do():
        view.write_shard(shard, result_for(view, shard))
    assert {path: path.read_bytes() for path in before} == before
    assert zarr.open_group(str(location), mode="r").attrs["sact"]["format"] == 2
    reopened = open_feature_set(str(location))
    assert reopened.view_names() == [CANONICAL, "jitter_d0"]
    assert np.array_equal(reopened.read(range(6)), written["features"])
    assert has_checksums(reopened.views["jitter_d0"].features)


def test_an_unknown_format_is_refused_in_one_line(tmp_path):
    location = tmp_path / "future.zarr"
    write_format1_store(location)
    zarr.open_group(str(location), mode="r+").attrs["sact"] = {"format": 3}
    with pytest.raises(FeatureStoreError, match=r"store format 3; this sact reads formats 1, 2"):
        open_feature_set(str(location))


def test_the_store_docs_examples_run_on_a_store_with_views(tmp_path, monkeypatch, capsys):
    write_store(tmp_path / "sact-demo" / "motion" / "feats.zarr", name="demo", views=("jitter_d0",))
    monkeypatch.chdir(tmp_path)
    for heading in ("## Reading a store with plain zarr", "## Reading a feature set with xarray"):
        exec(compile(section_code(heading), "docs/STORE.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "['demo']" in printed and "jitter_d0 {'jitter': True" in printed


# ---- checksums ----


def test_a_flipped_byte_is_reported_naming_the_video_instead_of_read(tmp_path):
    location = tmp_path / "feats.zarr"
    write_store(location, views=("jitter_d0",))
    clean = open_feature_set(str(location)).read(range(10))
    flip_byte(location, "fs", 6)
    flip_byte(location, "fs", 2, view="jitter_d0")
    feature_set = open_feature_set(str(location))
    with pytest.raises(FeatureStoreError, match=r"features of video 'v6' \(row 6\) .* damaged"):
        feature_set.read([0, 5, 6, 7])
    with pytest.raises(FeatureStoreError, match=r"video 'v2' \(row 2, view jitter_d0\)"):
        feature_set.read([2], view="jitter_d0")
    # the other videos of the same shards still read, bitwise
    assert np.array_equal(feature_set.read([4, 5, 7]), clean[[4, 5, 7]])


def test_a_damaged_small_array_is_one_line_on_open(tmp_path):
    location = tmp_path / "feats.zarr"
    write_store(location)
    flip_byte(location, "fs", 5, array="frame_index")
    with pytest.raises(
        FeatureStoreError, match=r"array frame_index of feature set fs in .* is dam"
    ):
        open_feature_set(str(location))


def test_verify_lists_damaged_videos_and_the_next_extraction_redoes_only_them(tmp_path):
    location = tmp_path / "feats.zarr"
    write_store(location, views=("jitter_d0",))
    clean = {
        view: open_feature_set(str(location)).read(range(10), view=view)
        for view in (CANONICAL, "jitter_d0")
    }
    assert verify_store(str(location)) == []
    flip_byte(location, "fs", 6)
    flip_byte(location, "fs", 2, view="jitter_d0")
    flip_byte(location, "fs", 9, array="done")  # shard 2: videos 8, 9

    damaged = verify_store(str(location))
    found = {(d.view, d.video_id, d.array) for d in damaged}
    assert found == {
        (CANONICAL, "v6", "features"),
        ("jitter_d0", "v2", "features"),
        (CANONICAL, "v8", "done"),
        (CANONICAL, "v9", "done"),
    }
    assert "checksum" in damaged[0].reason and all(d.redoable for d in damaged)
    assert mark_for_redo(str(location), damaged) == 4

    feature_set = open_feature_set(str(location))  # opens again: the done chunk was rewritten
    assert list(np.flatnonzero(~feature_set.usable)) == [6, 8, 9]  # readers skip them
    assert list(np.flatnonzero(~feature_set.usable_in("jitter_d0"))) == [2, 6, 8, 9]
    root = open_root(str(location), mode="a")
    for view in (CANONICAL, "jitter_d0"):
        writer = FeatureSetWriter(root["fs"], view=view)
        for shard in writer.shards_to_do():
            writer.write_shard(shard, result_for(writer, shard, seed=1))
    assert verify_store(str(location)) == []
    redone = open_feature_set(str(location))
    assert redone.usable.all() and redone.usable_in("jitter_d0").all()
    for view, rows in ((CANONICAL, [0, 1, 2, 3, 4, 5, 7]), ("jitter_d0", [0, 1, 3, 4, 5, 6, 7])):
        # every video that was not damaged kept its features bitwise
        assert np.array_equal(redone.read(rows, view=view), clean[view][rows])


def test_verify_lists_done_videos_whose_chunks_were_deleted_and_they_are_redone(tmp_path):
    location = tmp_path / "feats.zarr"
    write_store(location, views=("jitter_d0",))
    clean = {
        view: open_feature_set(str(location)).read(range(10), view=view)
        for view in (CANONICAL, "jitter_d0")
    }
    # zarr reads a missing chunk as the fill value, without an error
    chunk_file(location / "fs" / "features", 1).unlink()  # shard 1: videos 4-7
    chunk_file(location / "fs" / "views" / "jitter_d0" / "frame_index", 2).unlink()  # 8, 9

    damaged = verify_store(str(location))
    assert {(d.view, d.video_id, d.array) for d in damaged} == {
        *((CANONICAL, f"v{row}", "features") for row in range(4, 8)),
        ("jitter_d0", "v8", "frame_index"),
        ("jitter_d0", "v9", "frame_index"),
    }
    assert all(d.reason == MISSING and d.redoable for d in damaged)
    assert mark_for_redo(str(location), damaged) == 6
    feature_set = open_feature_set(str(location))
    assert list(np.flatnonzero(~feature_set.usable)) == [4, 5, 6, 7]  # readers skip them
    assert list(np.flatnonzero(~feature_set.usable_in("jitter_d0"))) == [4, 5, 6, 7, 8, 9]
    root = open_root(str(location), mode="a")
    for view in (CANONICAL, "jitter_d0"):
        writer = FeatureSetWriter(root["fs"], view=view)
        for shard in writer.shards_to_do():
            writer.write_shard(shard, result_for(writer, shard))
    assert verify_store(str(location)) == []
    redone = open_feature_set(str(location))
    assert redone.usable.all() and redone.usable_in("jitter_d0").all()
    for view in (CANONICAL, "jitter_d0"):  # the same values again, the others kept bitwise
        assert np.array_equal(redone.read(range(10), view=view), clean[view])


def test_info_verify_lists_and_marks_damaged_videos(tmp_path):
    location = tmp_path / "feats.zarr"
    write_store(location)
    flip_byte(location, "fs", 3)
    command = [sys.executable, "-m", "sact.cli", "info", str(location), "--verify"]
    listed = subprocess.run([*command, "--json"], capture_output=True, text=True)
    assert listed.returncode == 1, listed.stderr
    report = json.loads(listed.stdout)["verify"]
    assert [(d["video_id"], d["array"]) for d in report["damaged"]] == [("v3", "features")]
    assert report["marked_for_redo"] == 1
    assert "sact extract" in listed.stderr and "Traceback" not in listed.stderr
    assert listed.stderr.count("damaged (video, view) pairs") == 1  # the verdict, once
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # marked pending: nothing damaged is done now
    said = again.stdout + again.stderr
    assert said.count("no damaged video") == 1 and "no damaged video" in again.stdout
