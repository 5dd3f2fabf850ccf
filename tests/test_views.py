"""Augmented views (extract/views.py, docs/STORE.md "Views"): what a view picks, extracting views
into a feature set (also later, without touching what is there), flips refused on SSv2, views in
`sact info` and in the HDF5 copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from sact.cli import app
from sact.common.claims import ClaimBook, RunInfo
from sact.extract.backbone import FrozenBackbone, load_backbone
from sact.extract.config import ExtractConfig
from sact.extract.decode import read_frames
from sact.extract.pipeline import ExtractSummary, run_extraction
from sact.extract.shard_writer import shard_topic
from sact.extract.views import ViewError, ViewSpec, parse_view, requested_views
from sact.store.backends import open_feature_set
from sact.store.feature_set import CANONICAL
from sact.store.hdf5 import export_hdf5
from sact.store.sampling import segment_centers
from sact.store.zarr_store import open_root

TINY = {"backbone": "resnet10t", "random_init": True, "size": 32, "frames": 4, "workers": 0}
runner = CliRunner()


def extract(videos: Path, out: Path, **options: Any) -> ExtractSummary:
    config = ExtractConfig(videos=videos, out=str(out), **{**TINY, "name": "tiny", **options})
    return run_extraction(config, console=Console(quiet=True))


# ---- what a view picks ----


def test_view_specs_read_and_name_themselves_in_one_normal_form():
    assert parse_view("crop-random_jitter").name == "jitter_crop-random_d0"
    assert parse_view("jitter_d3") == ViewSpec(jitter=True, draw=3)
    assert parse_view("flip_crop-tl").name == "crop-tl_flip"
    for bad in ("crop-middle", "jitter_jitter", "flip_d1", "", "crop-center"):
        with pytest.raises(ViewError):
            parse_view(bad)
    assert ViewSpec.from_json(parse_view("jitter_flip_d2").to_json()).name == "jitter_flip_d2"


def test_jitter_draws_one_frame_per_segment_the_same_for_the_same_video():
    view = ViewSpec(jitter=True)
    drawn = view.frame_indices(80, 8, "video-a")
    assert np.array_equal(drawn, view.frame_indices(80, 8, "video-a"))  # a pure function
    assert np.all(drawn // 10 == np.arange(8))  # one frame inside each 10-frame segment
    others = [view.frame_indices(80, 8, f"video-{i}") for i in range(5)]
    others.append(ViewSpec(jitter=True, draw=1).frame_indices(80, 8, "video-a"))
    assert all(not np.array_equal(drawn, other) for other in others)
    # shorter than T: frames repeat, in order, as in the canonical view
    short = view.frame_indices(3, 8, "short")
    assert set(short) == {0, 1, 2} and np.all(np.diff(short) >= 0)
    assert np.array_equal(ViewSpec(flip=True).frame_indices(80, 8, "a"), segment_centers(80, 8))


def test_crops_land_in_corners_or_anywhere_inside_the_frame():
    assert ViewSpec(crop="tl").crop_origin(71, 90, 64, "a") == (0, 0)
    assert ViewSpec(crop="br").crop_origin(71, 90, 64, "a") == (7, 26)
    assert ViewSpec(flip=True).crop_origin(71, 90, 64, "a") == (4, 13)  # torchvision's center
    origins = {ViewSpec(crop="random").crop_origin(71, 90, 64, f"v{i}") for i in range(40)}
    assert len(origins) > 20 and all(0 <= t <= 7 and 0 <= left <= 26 for t, left in origins)


def test_flips_on_an_ssv2_split_need_the_override():
    with pytest.raises(ViewError, match="--allow-flip"):
        requested_views(["crop-tl_flip"], random_count=0, flip_allowed=False, split="ssv2_OTAM")
    allowed = requested_views(["flip"], random_count=0, flip_allowed=True, split="ssv2_OTAM")
    assert [view.name for view in allowed] == ["flip"]
    assert requested_views(["flip"], random_count=0, flip_allowed=False, split="ucf_ARN")
    # random views never flip, so they need no override
    views = requested_views([], random_count=2, flip_allowed=False, split="ssv2_CMN")
    assert [view.name for view in views] == ["jitter_crop-random_d0", "jitter_crop-random_d1"]


def test_cli_refuses_flips_on_ssv2_in_one_line(video_folder: Path, tmp_path: Path):
    options = ["--videos", str(video_folder), "--out", str(tmp_path / "f.zarr")]
    result = runner.invoke(app, ["extract", *options, "--split", "ssv2_OTAM", "--view", "flip"])
    assert result.exit_code == 2
    assert "pass --allow-flip" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "f.zarr").exists()


def test_a_view_claims_its_own_shards(tmp_path: Path):
    root = open_root(str(tmp_path / "f.zarr"), mode="a")
    first = ClaimBook(root, "tiny", run=RunInfo.this_process())
    second = ClaimBook(root, "tiny", run=RunInfo.this_process())
    assert first.try_claim(shard_topic(0))
    assert not second.try_claim(shard_topic(0))
    assert second.try_claim(shard_topic(0, view="jitter_d0"))  # same shard, other view: free


# ---- views in a feature set ----


def files_of(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_views_added_later_leave_everything_stored_untouched(video_folder: Path, tmp_path: Path):
    out = tmp_path / "feats.zarr"
    first = extract(video_folder, out, shard_size=2, views=("crop-tl",))
    assert [view.view for view in first.views] == [CANONICAL, "crop-tl"]
    stored = files_of(out / "tiny")

    second = extract(video_folder, out, shard_size=2, views=("crop-tl", "jitter_flip"))
    assert [(view.view, view.extracted_now) for view in second.views] == [
        (CANONICAL, 0),  # nothing redone
        ("crop-tl", 0),
        ("jitter_flip_d0", 5),
    ]
    after = files_of(out / "tiny")
    assert {path: after[path] for path in stored} == stored  # same bytes, not even rewritten
    assert all("jitter_flip_d0" in str(path) for path in set(after) - set(stored))

    feature_set = open_feature_set(str(out))
    assert feature_set.view_names() == [CANONICAL, "crop-tl", "jitter_flip_d0"]
    for view in feature_set.view_names():
        assert feature_set.usable_in(view).all()
        assert feature_set.counts(view) == {"videos": 5, "done": 5, "failed": 0, "pending": 0}
    jittered = feature_set.views["jitter_flip_d0"].frame_index
    assert not np.array_equal(jittered, feature_set.frame_index)
    again = extract(video_folder, out, shard_size=2, views=("jitter_flip",))
    assert [view.extracted_now for view in again.views] == [0, 0]  # resumes per view


def test_a_view_stores_the_backbone_on_exactly_its_frames_and_crop(
    video_folder: Path, tmp_path: Path
):
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, views=("jitter_crop-random_flip",), batch_size=1)
    feature_set = open_feature_set(str(out))
    view = feature_set.views["jitter_crop-random_flip_d0"]
    group = open_root(str(out), mode="r")["tiny"]["views"]["jitter_crop-random_flip_d0"]
    origins = np.asarray(group["crop_origin"][:])
    loaded = load_backbone("resnet10t", random_init=True, size=32)
    frozen = FrozenBackbone(loaded, device=torch.device("cpu"))
    prep = loaded.preprocessing
    for row in (0, 3):  # a long clip and the 3-frame clip
        frames = read_frames(video_folder / feature_set.paths[row], view.frame_index[row])
        resized = prep.resize(frames)  # (T, 3, H', W')
        top, left = origins[row]
        crops = resized[:, :, top : top + prep.size, left : left + prep.size].flip(-1)
        expected = frozen(crops.contiguous())  # (T, P, D)
        np.testing.assert_array_equal(feature_set.read([row], view=view.name)[0], expected)
    assert view.attrs["view"] == {"jitter": True, "crop": "random", "flip": True, "draw": 0}


def test_info_and_the_hdf5_copy_carry_the_views(video_folder: Path, tmp_path: Path):
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, random_views=2)
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    (info,) = json.loads(result.stdout)["feature_sets"]
    assert [view["name"] for view in info["views"]] == [
        CANONICAL,
        "jitter_crop-random_d0",
        "jitter_crop-random_d1",
    ]
    assert all(view["counts"]["done"] == 5 and view["size_bytes"] > 0 for view in info["views"])
    assert "jitter_crop-random_d1" in runner.invoke(app, ["info", str(out)]).stdout

    copy = tmp_path / "feats.h5"
    export_hdf5(str(out), copy)
    zarr_set, hdf5_set = open_feature_set(str(out)), open_feature_set(str(copy))
    assert hdf5_set.view_names() == zarr_set.view_names()
    for view in zarr_set.view_names():
        assert np.array_equal(hdf5_set.read(range(5), view=view), zarr_set.read(range(5), view))
        assert hdf5_set.views[view].attrs == zarr_set.views[view].attrs
