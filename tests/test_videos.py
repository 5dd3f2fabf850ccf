"""Video discovery and split matching: layouts, TRX/STRM id matching, unsafe paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from sact.data.split_lists import SplitError
from sact.extract.videos import (
    VideoDiscoveryError,
    find_videos,
    list_videos,
    resolve_video_path,
)


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def write_split(folder: Path, **parts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        (folder / f"{part}list01.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_finds_flat_class_and_frame_folder_layouts(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "123.webm",
        "jump/a.mp4",
        "jump/b.AVI",
        "riding bike/c.mkv",
        "riding bike/d/00001.jpg",
        "riding bike/d/00002.jpg",
        "flatframes/00001.png",
        "jump/notes.txt",
        ".hidden/x.mp4",
        "jump/.partial.mp4",
        "empty_class/nothing/readme.md",
    )
    found = {(video.path, video.label, video.stem) for video in find_videos(tmp_path)}
    assert found == {
        ("123.webm", "", "123"),
        ("jump/a.mp4", "jump", "a"),
        ("jump/b.AVI", "jump", "b"),
        ("riding bike/c.mkv", "riding bike", "c"),
        ("riding bike/d", "riding bike", "d"),
        ("flatframes", "", "flatframes"),
    }


def test_without_split_ids_are_stems_and_labels_are_class_folders(video_folder: Path) -> None:
    listed = list_videos(video_folder)
    assert [(r.video_id, r.path, r.label) for r in listed.records] == [
        ("j1", "juggling/j1.mp4", "juggling"),
        ("j2", "juggling/j2.webm", "juggling"),
        ("short", "juggling/short.mp4", "juggling"),
        ("r1", "riding bike/r1.mp4", "riding bike"),
        ("r2", "riding bike/r2", "riding bike"),
    ]
    assert listed.unmatched == []


def test_split_matches_ids_the_way_trx_and_strm_do(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    touch(
        videos,
        "blasting sand/-kYzxMKp514.mp4",  # Kinetics: file named after the YouTube id only
        "blasting sand/1663fIopl7c_000035_000045.mp4",  # Kinetics: the full id
        "riding_bike/r1/00001.jpg",  # class folder with underscores, split with a space
        "88644.webm",  # SSv2: flat files, classes only in the split
        "other/elsewhere.mp4",  # the only file with that id, in another class folder
        "jump/unlisted.mp4",
    )
    split = write_split(
        tmp_path / "split",
        train=[
            "blasting sand/-kYzxMKp514_000086_000096",
            "blasting sand/1663fIopl7c_000035_000045",
            "riding bike/r1",
        ],
        test=[
            "Twisting (wringing) something wet until water comes out/88644",
            "jump/elsewhere",
            "jump/missing_video",
        ],
    )
    listed = list_videos(videos, str(split))
    assert [(r.video_id, r.path, r.label) for r in listed.records] == [
        ("-kYzxMKp514_000086_000096", "blasting sand/-kYzxMKp514.mp4", "blasting sand"),
        (
            "1663fIopl7c_000035_000045",
            "blasting sand/1663fIopl7c_000035_000045.mp4",
            "blasting sand",
        ),
        ("r1", "riding_bike/r1", "riding bike"),
        ("88644", "88644.webm", "Twisting (wringing) something wet until water comes out"),
        ("elsewhere", "other/elsewhere.mp4", "jump"),
    ]
    assert listed.unmatched == ["jump/missing_video"]


def test_split_naming_no_file_at_all_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "videos", "jump/a.mp4")
    split = write_split(tmp_path / "split", test=["jump/b", "jump/c"])
    with pytest.raises(VideoDiscoveryError, match="none of the 2 videos"):
        list_videos(tmp_path / "videos", str(split))


def test_split_line_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "videos", "jump/a.mp4")
    split = write_split(tmp_path / "split", test=["jump/../../etc/passwd"])
    with pytest.raises(SplitError, match="escape"):
        list_videos(tmp_path / "videos", str(split))


def test_unknown_split_lists_the_known_ones(video_folder: Path) -> None:
    with pytest.raises(SplitError, match="ssv2_OTAM"):
        list_videos(video_folder, "no_such_split")


def test_no_videos_and_missing_folder_are_errors(tmp_path: Path) -> None:
    touch(tmp_path, "readme.txt")
    with pytest.raises(VideoDiscoveryError, match="no videos found"):
        list_videos(tmp_path)
    with pytest.raises(VideoDiscoveryError, match="does not exist"):
        list_videos(tmp_path / "nope")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    touch(tmp_path, "jump/a.mp4", "run/a.webm")
    with pytest.raises(VideoDiscoveryError, match="'a'"):
        list_videos(tmp_path)


@pytest.mark.parametrize("relative", ["../outside.mp4", "/etc/passwd", "jump/../../x", "a\\b", ""])
def test_stored_paths_leaving_the_folder_are_refused(tmp_path: Path, relative: str) -> None:
    with pytest.raises(VideoDiscoveryError, match="leaves the videos folder"):
        resolve_video_path(tmp_path, relative)


def test_stored_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "link").symlink_to(tmp_path)
    with pytest.raises(VideoDiscoveryError):
        resolve_video_path(tmp_path / "videos", "link/x.mp4")
    assert resolve_video_path(tmp_path / "videos", "jump/a.mp4") == tmp_path / "videos/jump/a.mp4"


def test_an_id_under_two_classes_of_a_split_names_both_split_lines(tmp_path: Path) -> None:
    touch(tmp_path / "videos", "101.webm", "102.webm")  # flat, as SSv2 ships
    split = write_split(tmp_path / "split", train=["jump/101", "run/102"], test=["walk/101"])
    with pytest.raises(VideoDiscoveryError) as raised:
        list_videos(tmp_path / "videos", str(split))
    message = str(raised.value)
    assert "'101'" in message and "trainlist01.txt line 1" in message
    assert "testlist01.txt line 1" in message and "--split" not in message


def test_videos_the_split_does_not_list_are_counted(tmp_path: Path) -> None:
    touch(tmp_path / "videos", "101.webm", "102.webm", "103.webm", "jump/104.mp4")
    split = write_split(tmp_path / "split", train=["jump/101"], test=["run/102"])
    listed = list_videos(tmp_path / "videos", str(split))
    assert [record.video_id for record in listed.records] == ["101", "102"]
    assert listed.unlisted == 2
    assert list_videos(tmp_path / "videos").unlisted == 0
