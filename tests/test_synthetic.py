"""The synthetic few-shot action dataset: real video files, disjoint splits, reproducible pixels."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from sact.data.split_lists import load_split
from sact.demo.synthetic import (
    ACTION_CLASSES,
    IDENTITIES,
    PHASE_COLOURS,
    TASKS,
    SyntheticDatasetConfig,
    make_synthetic_dataset,
    render_action,
)

BY_NAME = {action.name: action for action in ACTION_CLASSES}


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def object_centre(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(x, y) centre of the pixels that differ strongly from the background."""
    changed = np.abs(frame.astype(float) - background.astype(float)).sum(-1) > 150
    ys, xs = np.nonzero(changed)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_class_parts_are_disjoint_and_large_enough_for_five_way(task: str) -> None:
    parts: dict[str, set[str]] = {}
    for action in TASKS[task]:
        parts.setdefault(action.part, set()).add(action.name)
    assert set(parts) == {"train", "val", "test"}
    assert all(len(names) >= 5 for names in parts.values())
    assert len({action.name for action in TASKS[task]}) == len(TASKS[task])


def test_unseen_identities_combine_seen_shapes_and_colours() -> None:
    """A test identity is a new pair, never a shape or a colour training never showed."""
    by_part: dict[str, list] = {}
    for action in TASKS["appearance"]:
        by_part.setdefault(action.part, []).append(action.identity)
    seen_shapes = {identity.shape for identity in by_part["train"]}
    seen_colours = {identity.colour for identity in by_part["train"]}
    for identity in by_part["val"] + by_part["test"]:
        assert identity.shape in seen_shapes and identity.colour in seen_colours
    assert [a.part for a in TASKS["clutter"]] == [a.part for a in TASKS["appearance"]]


def test_order_classes_show_the_same_colours_for_as_long() -> None:
    """Pooled over time, two videos of different order classes have the same colour histogram of
    the object: only the order tells them apart."""
    counts = []
    for action in TASKS["order"][:2]:
        video = render_action(
            action, frames=8, size=32, distractors=0, rng=np.random.default_rng(0)
        )
        background = np.median(video[0].reshape(-1, 3), axis=0)
        object_pixels = [frame[np.abs(frame - background).sum(-1) > 150].mean(0) for frame in video]
        nearest = [
            min(PHASE_COLOURS, key=lambda c: np.abs(np.array(PHASE_COLOURS[c]) - rgb).sum())
            for rgb in object_pixels
        ]
        assert nearest == [c for c in action.colour_order for _ in range(2)]
        counts.append(sorted(nearest))
    assert counts[0] == counts[1]


def test_clutter_adds_moving_objects_of_other_identities() -> None:
    action = TASKS["clutter"][0]
    plain = next(a for a in TASKS["appearance"] if a.name == action.name)
    rng_seed = 3
    cluttered = render_action(
        action, frames=4, size=64, distractors=0, rng=np.random.default_rng(rng_seed)
    )
    alone = render_action(
        plain, frames=4, size=64, distractors=0, rng=np.random.default_rng(rng_seed)
    )

    def painted(video):
        background = np.median(video[0].reshape(-1, 3), axis=0)
        return (np.abs(video.astype(float) - background).sum(-1) > 150).mean()

    assert painted(cluttered) > 2 * painted(alone)
    assert action.identity in IDENTITIES.values() and action.clutter == 3


def test_dataset_files_splits_and_reproducibility(tmp_path: Path) -> None:
    classes = ("slide-right", "grow", "slide-down", "slide-left", "shrink")
    # .avi (MPEG-4): the encoder the demo uses because it writes the same bytes in every run
    config = SyntheticDatasetConfig(
        root=tmp_path / "a", videos_per_class=2, frames=6, size=32, classes=classes, suffix=".avi"
    )
    dataset = make_synthetic_dataset(config)
    split = load_split(str(dataset.splits)).parts
    assert {part: len(entries) for part, entries in split.items()} == {
        "train": 4,
        "val": 2,
        "test": 4,
    }
    for entries in split.values():
        for entry in entries:
            assert BY_NAME[entry.label].part in dataset.parts
            video = decode(dataset.videos / entry.label / f"{entry.video_id}.avi")
            assert video.shape == (6, 32, 32, 3)
    train_classes = {entry.label for entry in split["train"]}
    test_classes = {entry.label for entry in split["test"]}
    assert train_classes == {"slide-right", "grow"} and test_classes == {"slide-left", "shrink"}

    again = make_synthetic_dataset(
        SyntheticDatasetConfig(**{**config.__dict__, "root": tmp_path / "b"})
    )
    other_seed = make_synthetic_dataset(
        SyntheticDatasetConfig(**{**config.__dict__, "root": tmp_path / "c", "seed": 1})
    )
    name = Path("grow/grow-001.avi")
    assert (dataset.videos / name).read_bytes() == (again.videos / name).read_bytes()
    assert not np.array_equal(decode(dataset.videos / name), decode(other_seed.videos / name))


def test_rerun_skips_existing_videos(tmp_path: Path) -> None:
    config = SyntheticDatasetConfig(root=tmp_path, videos_per_class=1, frames=4, size=32,
                                    classes=("static",))  # fmt: skip
    dataset = make_synthetic_dataset(config)
    video = dataset.videos / "static" / "static-000.mp4"
    before = video.stat().st_mtime_ns
    written: list[str] = []
    make_synthetic_dataset(config, on_video=written.append)
    assert written == ["static-000"] and video.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [("slide-right", 0, 1), ("slide-left", 0, -1), ("slide-up", 1, -1), ("fall", 1, 1)],
)
def test_motion_defines_the_class(name: str, axis: int, sign: int) -> None:
    """The object moves the class's way, wherever it starts and whatever it looks like."""
    starts = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        video = render_action(BY_NAME[name], frames=8, size=64, distractors=0, rng=rng)
        background = np.median(video[0].reshape(-1, 3), axis=0)
        first, last = object_centre(video[0], background), object_centre(video[-1], background)
        assert sign * (last[axis] - first[axis]) > 10  # pixels
        starts.append(first)
    assert np.ptp(np.array(starts), axis=0).max() > 5  # random positions


def test_rotation_and_size_change_keep_the_object_in_place() -> None:
    rng = np.random.default_rng(0)
    for name in ("rotate-ccw", "grow", "shrink"):
        video = render_action(BY_NAME[name], frames=8, size=64, distractors=0, rng=rng)
        background = np.median(video[0].reshape(-1, 3), axis=0)
        moved = object_centre(video[-1], background) - object_centre(video[0], background)
        assert np.abs(moved).max() < 3
        assert not np.array_equal(video[0], video[-1])


def test_bad_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic classes"):
        make_synthetic_dataset(SyntheticDatasetConfig(root=tmp_path, classes=("moonwalk",)))
    with pytest.raises(ValueError, match="even size"):
        make_synthetic_dataset(SyntheticDatasetConfig(root=tmp_path, size=33))
