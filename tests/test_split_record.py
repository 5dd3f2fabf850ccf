"""The split a store records (issue 24): used from any folder, after its lists are gone, and
compared with the lists given instead; list mistakes refused at extract time; an unfinished
extraction named as the reason training cannot start."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sact.data.split_lists import SPLIT_RECORD, SplitRecord, load_split
from sact.demo.synthetic import encode_video
from sact.extract.config import ExtractConfigError
from sact.fewshot.config import EvalConfig, EvaluationError
from sact.fewshot.episodes import EpisodeError, build_pool, resolve_split
from sact.fewshot.evaluation import evaluate
from sact.fewshot.training import TrainConfig, TrainingError, train
from sact.store.backends import open_feature_set
from sact.testing.extraction import extract_in_this_process, tiny_config
from sact.testing.stores import write_split_lists, write_synthetic_store
from sact.testing.videos import synthetic_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# HMDB-like class folders with awkward names, two classes per part, two videos each
CLASSES = {
    "train0": "brush hair",
    "train1": "kick #1",
    "val0": "ride (bike)",
    "val1": "climb!",
    "test0": "fencing",
    "test1": "sauté",
}


def write_hyrsm_dataset(root: Path, lists: Path) -> None:
    """videos/<class>/<file>.avi under ``root``, listed as HyRSM does in ``lists``."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for seed, (index, folder) in enumerate(CLASSES.items()):
        for number in range(2):
            relative = f"videos/{folder}/{folder} {number}.avi"
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_video(path, synthetic_frames(4, seed=10 * seed + number))
            parts[index.rstrip("0123456789")].append(f"{index}//{relative}")
    lists.mkdir(parents=True)
    for part, lines in parts.items():
        (lists / f"{part}_few_shot.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store extracted with `--split lists`, a path relative to the folder extract ran in."""
    base = tmp_path_factory.mktemp("extracted")
    write_hyrsm_dataset(base / "hmdb", base / "lists")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        extract_in_this_process(Path("hmdb"), base / "feats.zarr", split="lists")
    return base


def tiny_training(store: Path, out: Path, **changes: object) -> TrainConfig:
    options = {
        "feats": str(store),
        "way": 2,
        "shot": 1,
        "query": 1,
        "frames": 4,
        "d_k": 8,
        "iterations": 2,
        "warmup": 1,
        "tasks_per_batch": 1,
        "val_every": 2,
        "val_episodes": 2,
        "out": str(out),
        "device": "cpu",
        **changes,
    }
    return TrainConfig(**options)  # type: ignore[arg-type]


def test_the_store_records_where_its_lists_are_their_digests_and_their_videos(extracted):
    feature_set = open_feature_set(str(extracted / "feats.zarr"))
    record = SplitRecord.from_json(feature_set.attrs[SPLIT_RECORD], where="test")
    lists = extracted / "lists"
    assert record.location == str(lists.resolve())  # absolute, though given relative
    assert record.digests == {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(lists.iterdir())
    }
    assert record.video_ids["train"] == ["brush hair 0", "brush hair 1", "kick #1 0", "kick #1 1"]
    assert set(record.video_ids) == {"train", "val", "test"}


def test_training_from_another_folder_and_after_the_lists_are_gone(
    extracted, tmp_path, monkeypatch
):
    store = extracted / "feats.zarr"
    monkeypatch.chdir(tmp_path)  # not the folder `sact extract --split lists` ran in
    trained = train(tiny_training(store, tmp_path / "run"))
    assert trained.steps == 2
    feature_set = open_feature_set(str(store))
    recorded = resolve_split(feature_set, None)
    assert "as recorded in the store" in recorded.description and recorded.note is None
    assert build_pool(feature_set, recorded, "train").classes == ["brush hair", "kick #1"]
    moved = extracted / "lists-moved"
    (extracted / "lists").rename(moved)  # the lists are gone: the record is enough
    try:
        again = resolve_split(feature_set, None)
        assert again.parts == recorded.parts
        # a checkpoint names the recorded location; on a machine without it, the record serves
        assert resolve_split(feature_set, recorded.name).parts == recorded.parts
        assert train(tiny_training(store, tmp_path / "run2")).steps == 2
    finally:
        moved.rename(extracted / "lists")


def test_lists_that_differ_from_the_record_are_used_with_a_note(extracted, tmp_path):
    feature_set = open_feature_set(str(extracted / "feats.zarr"))
    same = shutil.copytree(extracted / "lists", tmp_path / "same")
    assert resolve_split(feature_set, str(same)).note is None  # the same lists, elsewhere
    edited = shutil.copytree(extracted / "lists", tmp_path / "edited")
    train_list = edited / "train_few_shot.txt"
    train_list.write_text("".join(train_list.read_text().splitlines(True)[:-1]))
    source = resolve_split(feature_set, str(edited))
    assert source.note is not None and "differ from those" in source.note
    assert str(edited.resolve()) in source.note and len(source.parts["train"]) == 3


def test_lists_edited_after_extraction_leave_the_recorded_split_with_a_note(tmp_path):
    write_hyrsm_dataset(tmp_path / "hmdb", tmp_path / "lists")
    extract_in_this_process(
        tmp_path / "hmdb", tmp_path / "feats.zarr", split=str(tmp_path / "lists")
    )
    val_list = tmp_path / "lists" / "val_few_shot.txt"
    val_list.write_text(val_list.read_text().splitlines()[0] + "\n")
    source = resolve_split(open_feature_set(str(tmp_path / "feats.zarr")), None)
    assert source.note is not None and "changed since" in source.note and "--split" in source.note
    assert len(source.parts["val"]) == 4  # as extracted


def test_an_old_store_works_from_its_folder_and_elsewhere_says_where_the_split_came_from(
    tmp_path, monkeypatch
):
    """A store from before the record holds the --split path as given (relative)."""
    parts = {"train": range(0, 4), "val": range(4, 6), "test": range(6, 8)}
    write_split_lists(tmp_path / "lists", 8, 3, parts)
    monkeypatch.chdir(tmp_path)
    store = write_synthetic_store(
        tmp_path / "feats.zarr", classes=8, videos_per_class=3, split="lists"
    )
    feature_set = open_feature_set(store)
    assert len(build_pool(feature_set, resolve_split(feature_set, None), "train")) == 12
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(EpisodeError) as refused:
        resolve_split(feature_set, None)
    said = str(refused.value)
    assert "unknown split 'lists'" in said and store in said and "--split" in said
    assert "\n" not in said


@pytest.mark.parametrize(
    ("names", "expected", "close"),
    [
        (
            ["train_fewshot.txt", "val_few_shot.txt", "test_few_shot.txt"],
            "train_few_shot.txt",
            "train_fewshot.txt is close",
        ),
        (["trainlist03.txt", "testlist03.txt"], "vallist03.txt", None),
        (["trainlist03.txt", "valist03.txt", "testlist03.txt"], "vallist03.txt", "valist03.txt"),
    ],
)
def test_a_missing_or_misspelled_list_is_refused_at_extract_time(
    tmp_path, video_folder, names, expected, close
):
    lists = tmp_path / "lists"
    lists.mkdir()
    for number, name in enumerate(names):
        part = name[: name.index("list")] if "list" in name else name.split("_")[0]
        few_shot = "few_shot" in name or "fewshot" in name
        (lists / name).write_text(f"{part}0//v/c{number}/b.avi\n" if few_shot else f"c{number}/b\n")
    with pytest.raises(ExtractConfigError) as refused:
        tiny_config(video_folder, tmp_path / "feats.zarr", split=str(lists)).check()
    said = str(refused.value)
    assert f"expected {expected}" in said and "\n" not in said
    assert close is None or close in said


def test_the_command_line_refuses_a_misspelled_list_in_one_line_before_any_work(
    tmp_path, video_folder
):
    lists = tmp_path / "lists"
    lists.mkdir()
    for part, name in (
        ("train", "train_fewshot"),
        ("val", "val_few_shot"),
        ("test", "test_few_shot"),
    ):
        (lists / f"{name}.txt").write_text(f"{part}0//v/{part}/b.avi\n")
    command = [sys.executable, "-m", "sact.cli", "extract", "--videos", str(video_folder)]
    command += ["--out", str(tmp_path / "feats.zarr"), "--split", str(lists), "--random-init"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "has no train list: expected train_few_shot.txt" in done.stderr
    assert not (tmp_path / "feats.zarr").exists()


def test_training_during_an_unfinished_extraction_says_so(tmp_path):
    parts = {"train": range(0, 4), "val": range(4, 6), "test": range(6, 8)}
    lists = write_split_lists(tmp_path / "lists", 8, 4, parts)
    # shards of 4 videos, one class each: only the first train class is extracted
    store = write_synthetic_store(
        tmp_path / "feats.zarr",
        classes=8,
        videos_per_class=4,
        shard_size=4,
        pending_shards=[1, 2, 3],
        split=str(lists),
    )
    with pytest.raises(TrainingError) as refused:
        train(tiny_training(Path(store), tmp_path / "run", split=str(lists)))
    assert str(refused.value).startswith(
        "the extraction is not finished: 4 of 16 train videos done (run the same `sact extract`"
    )


def test_evaluating_during_an_unfinished_extraction_says_so(tmp_path):
    parts = {"train": range(0, 4), "val": range(4, 6), "test": range(6, 8)}
    lists = write_split_lists(tmp_path / "lists", 8, 4, parts)
    options = {"classes": 8, "videos_per_class": 4, "shard_size": 4, "split": str(lists)}
    done = write_synthetic_store(tmp_path / "done.zarr", **options)
    run = train(tiny_training(Path(done), tmp_path / "run", split=str(lists))).run_dir
    # the same videos, the second test class not extracted yet
    unfinished = write_synthetic_store(tmp_path / "unfinished.zarr", **options, pending_shards=[7])
    config = EvalConfig(run=str(run), feats=unfinished, way=2, shots=(1,), query=1, episodes=5)
    with pytest.raises(EvaluationError) as refused:
        evaluate(config)
    assert str(refused.value).startswith(
        "the extraction is not finished: 4 of 8 test videos done (run the same `sact extract`"
    )


def test_hyrsm_indices_stay_the_classes_where_folders_are_not_classes(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_few_shot.txt").write_text("train0//v/jump/a.avi\ntrain0//v/run/b.avi\n")
    (lists / "test_few_shot.txt").write_text("test0//v/sit/c.avi\n")
    split = load_split(str(lists))
    assert [entry.label for entry in split.parts["train"]] == ["train0", "train0"]
    assert [entry.label for entry in split.parts["test"]] == ["test0"]
