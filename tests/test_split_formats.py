"""HyRSM / MoLo / CLIP-FSAR split lists ({train,val,test}_few_shot.txt) beside the OTAM ones.

Their lines are a part and class index (`test0`), then `/video_id` (SSv2: `test0/88644`) or `//` and
a path under the dataset root (HMDB: `test0//videos/fencing/x.avi`; Kinetics:
`val0//val_256/baking_cookies/-514AQUrSow.mp4`), as in configs/projects/*/ of those code bases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sact.data.split_lists import SplitError, load_split
from sact.demo.synthetic import encode_video
from sact.extract.videos import VideoDiscoveryError, list_videos
from sact.fewshot.episodes import build_pool, resolve_split
from sact.store.backends import open_feature_set
from sact.testing.extraction import extract_in_this_process
from sact.testing.videos import synthetic_frames

FEW_SHOT = "HyRSM/MoLo/CLIP-FSAR"


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def write_few_shot_split(folder: Path, **parts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        (folder / f"{part}_few_shot.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_paths_under_the_dataset_root_kinetics_layout(tmp_path: Path) -> None:
    root = tmp_path / "kinetics"
    touch(
        root,
        "train_256/busking/-YGUR0HXgyE_000085_000095.mp4",
        "val_256/busking/09ZMT8HT0DA.mkv",
        "train_256/blasting_sand/-kYzxMKp514_000086_000096.mp4",
        "val_256/baking_cookies/-514AQUrSow.mp4",
    )
    split = write_few_shot_split(
        tmp_path / "split",
        train=[
            "train0//train_256/busking/-YGUR0HXgyE_000085_000095.mp4",
            "train0//val_256/busking/09ZMT8HT0DA.mkv",
            "train1//train_256/blasting_sand/-kYzxMKp514_000086_000096.mp4",
        ],
        val=["val0//val_256/baking_cookies/-514AQUrSow.mp4"],
        test=["test0//val_256/cutting_watermelon/missing.mp4"],
    )
    assert load_split(str(split)).format.name.startswith(FEW_SHOT)
    listed = list_videos(root, str(split))
    assert listed.split_format is not None and listed.split_format.startswith(FEW_SHOT)
    # the class is the folder the path names, not the class index (train0)
    assert [(r.video_id, r.path, r.label) for r in listed.records] == [
        ("-YGUR0HXgyE_000085_000095", "train_256/busking/-YGUR0HXgyE_000085_000095.mp4", "busking"),
        ("09ZMT8HT0DA", "val_256/busking/09ZMT8HT0DA.mkv", "busking"),
        (
            "-kYzxMKp514_000086_000096",
            "train_256/blasting_sand/-kYzxMKp514_000086_000096.mp4",
            "blasting_sand",
        ),
        ("-514AQUrSow", "val_256/baking_cookies/-514AQUrSow.mp4", "baking_cookies"),
    ]
    assert listed.unmatched == ["test0//val_256/cutting_watermelon/missing.mp4"]


def test_video_ids_in_a_flat_folder_ssv2_layout(tmp_path: Path) -> None:
    touch(tmp_path / "ssv2", "88644.webm", "192705.webm", "72897.webm")
    split = write_few_shot_split(
        tmp_path / "split", test=["test0/88644", "test0/192705", "test1/72897", "test1/4357"]
    )
    listed = list_videos(tmp_path / "ssv2", str(split))
    assert [(r.video_id, r.path, r.label) for r in listed.records] == [
        ("88644", "88644.webm", "test0"),
        ("192705", "192705.webm", "test0"),
        ("72897", "72897.webm", "test1"),
    ]
    assert listed.unmatched == ["test1/4357"]


def test_a_path_missing_at_the_root_is_looked_up_in_its_class_folder(tmp_path: Path) -> None:
    """--videos pointing at a folder of class folders instead of the code base's dataset root."""
    touch(tmp_path / "hmdb", "fencing/f1.avi")
    split = write_few_shot_split(tmp_path / "split", test=["test0//videos/fencing/f1.avi"])
    listed = list_videos(tmp_path / "hmdb", str(split))
    assert [(r.video_id, r.path, r.label) for r in listed.records] == [
        ("f1", "fencing/f1.avi", "fencing")
    ]


@pytest.mark.parametrize(
    "line",
    [
        "test0//../outside.mp4",
        "test0///etc/passwd",
        "test0//videos/../../outside.mp4",
        "test0//..",
        "test0//a\\b.mp4",
        "test0/../x",
        "test0/a/b",
    ],
)
def test_lines_leaving_the_root_are_refused(tmp_path: Path, line: str) -> None:
    touch(tmp_path / "videos", "jump/a.mp4")
    split = write_few_shot_split(tmp_path / "split", test=[line])
    with pytest.raises(SplitError, match="refused"):
        list_videos(tmp_path / "videos", str(split))


def test_paths_that_stay_inside_are_kept_and_links_out_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    touch(root, "videos/jump/a.mp4")
    (root / "videos" / "out").symlink_to(tmp_path)
    touch(tmp_path, "secret.mp4")
    inside = write_few_shot_split(tmp_path / "inside", test=["test0//videos/run/../jump/a.mp4"])
    listed = list_videos(root, str(inside))
    assert [(r.video_id, r.path) for r in listed.records] == [("a", "videos/jump/a.mp4")]
    linked = write_few_shot_split(tmp_path / "linked", test=["test0//videos/out/secret.mp4"])
    with pytest.raises(VideoDiscoveryError, match="outside"):
        list_videos(root, str(linked))


def test_a_folder_of_both_formats_or_neither_is_an_error(tmp_path: Path) -> None:
    split = write_few_shot_split(tmp_path / "split", test=["test0/1"])
    (split / "testlist01.txt").write_text("jump/1\n")
    with pytest.raises(SplitError, match="two formats"):
        load_split(str(split))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SplitError, match=r"_few_shot\.txt"):
        load_split(str(tmp_path / "empty"))
    bad = write_few_shot_split(tmp_path / "bad", test=["fencing/x.avi"])
    with pytest.raises(SplitError, match="expected '<part><class index>/video_id'"):
        load_split(str(bad))


def test_hmdb_layout_extracts_and_feeds_episodes(tmp_path: Path) -> None:
    """A generated HMDB-like dataset (real .avi files under videos/<class>/, three levels down,
    where discovery alone finds nothing) extracted and matched through its _few_shot.txt lists."""
    root = tmp_path / "hmdb51"
    classes = {"train0": "fencing", "train1": "kick", "val0": "kick_ball", "test0": "climb"}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for seed, (label, folder) in enumerate(classes.items()):
        for index in range(2):
            relative = f"videos/{folder}/{folder}_{index}.avi"
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_video(path, synthetic_frames(4, seed=10 * seed + index))
            parts[label.rstrip("0123456789")].append(f"{label}//{relative}")
    split = write_few_shot_split(tmp_path / "split", **parts)

    said = extract_in_this_process(root, tmp_path / "feats.zarr", split=str(split))
    assert f"split {split} ({FEW_SHOT} format): read train_few_shot.txt (4 lines)" in said
    assert "8 videos found, 0 lines name no file" in said
    features = open_feature_set(str(tmp_path / "feats.zarr"), "tiny")
    assert features.usable.all()
    assert sorted(zip(features.labels, features.video_ids, strict=True))[:2] == [
        ("climb", "climb_0"),
        ("climb", "climb_1"),
    ]
    source = resolve_split(features, None)  # the split stage 1 recorded
    assert FEW_SHOT in source.description
    pool = build_pool(features, source, "train")
    assert pool.classes == ["fencing", "kick"] and len(pool) == 4
