"""`sact extract` and `sact info` end to end: the real pipeline and CLI on synthetic videos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner, Result

from sact.cli import app
from sact.common.errors import SactError
from sact.extract.backbone import ComputePlan, flush_denormals, load_backbone
from sact.extract.clips import check_shared_memory, shared_memory_needed
from sact.extract.decode import sample_clip
from sact.extract.pipeline import ExtractSummary, VideosPerSecond, run_extraction
from sact.store.backends import open_feature_set
from sact.store.feature_set import FeatureStoreError
from sact.testing.extraction import tiny_cli_options, tiny_config

# The tests' tiny extraction at 64 px (a 2×2 ResNet grid), named after its config.
AT_64_PX = {"size": 64, "name": None}
CORRUPT_REASONS = {
    "empty": "empty file",
    "truncated": "a damaged or truncated MP4/QuickTime file",
    "not_a_video": "not a readable video",
    "audio_only": "no video stream",
    "zero_frames": "no frames",
}
ARRAYS = ("video_id", "path", "label", "num_frames", "frame_index", "error", "done", "features")
runner = CliRunner()


def quiet() -> Console:
    return Console(quiet=True)


def extract(videos: Path, out: Path, **options: Any) -> ExtractSummary:
    return run_extraction(tiny_config(videos, out, **{**AT_64_PX, **options}), console=quiet())


def read_arrays(store: Path, name: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")[name]
    return {array: np.asarray(group[array][:]) for array in ARRAYS}


def test_extract_writes_features_equal_to_timm_forward_features(
    mixed_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.zarr"
    # batch_size 1: each forward pass is one video's T frames, exactly as the reference below.
    summary = extract(mixed_folder, out, batch_size=1, shard_size=3, workers=1)
    assert (summary.videos, summary.done, summary.failed, summary.pending) == (10, 5, 5, 0)
    reasons = {Path(failure.path).stem: failure.reason for failure in summary.failures}
    assert set(reasons) == set(CORRUPT_REASONS)
    for kind, reason in CORRUPT_REASONS.items():
        assert reason in reasons[kind]

    feature_set = open_feature_set(str(out))
    assert feature_set.name == "resnet10t-64px-4f-randinit"
    assert feature_set.features.shape == (10, 4, 4, 512)
    assert feature_set.features.metadata.dimension_names == ("video", "frame", "patch", "channel")
    loaded = load_backbone("resnet10t", random_init=True, size=64)
    for index in np.flatnonzero(feature_set.usable):
        path = mixed_folder / feature_set.paths[index]
        clip = sample_clip(path, 4)
        images = loaded.preprocessing.normalize(loaded.preprocessing.resize_and_crop(clip.frames))
        with torch.inference_mode(), flush_denormals():
            maps = loaded.features.model.forward_features(images)  # (T, D, h, w)
        expected = maps.flatten(2).transpose(1, 2).to(torch.float16).numpy()  # (T, h*w, D)
        np.testing.assert_array_equal(feature_set.read([index])[0], expected)
        assert feature_set.read_frame_index([index])[0].tolist() == clip.indices.tolist()
        assert feature_set.num_frames[index] == clip.num_frames
    attrs = feature_set.attrs
    assert (
        attrs["weights_source"] == "random-init"
        and attrs["weights_sha256"] == loaded.weights.sha256
    )
    assert attrs["grid"] == [2, 2] and attrs["dim"] == 512 and attrs["frames"] == 4
    assert attrs["config"]["backbone"] == "resnet10t" and attrs["videos_dir"] == str(mixed_folder)
    assert set(attrs["versions"]) >= {"sact", "torch", "timm", "zarr", "av", "numpy"}


def test_store_is_plain_zarr(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, name="tiny", shard_size=2)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["sact"] == {"format": 2}
    group = root["tiny"]
    assert group["features"].dtype == np.float16 and group["features"].shards[0] == 2
    assert [str(v) for v in group["label"][:]] == ["juggling"] * 3 + ["riding bike"] * 2
    assert [str(v) for v in group["path"][:]][-1] == "riding bike/r2"
    assert group["done"][:].all() and group["frame_index"][2].tolist() == [0, 1, 1, 2]


def test_vit_with_grid_and_batches_across_videos(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.zarr"
    summary = extract(
        video_folder, out, backbone="vit_tiny_patch16_224", grid=2, batch_size=3, shard_size=4
    )
    assert summary.feature_set == "vit_tiny_patch16_224-64px-4f-g2-randinit"
    feature_set = open_feature_set(str(out))
    assert feature_set.features.shape == (5, 4, 4, 192) and feature_set.grid == (2, 2)
    assert summary.done == 5 and np.isfinite(feature_set.read(range(5))).all()


def test_rerun_retries_only_failed_shards_and_appends_new_videos(
    mixed_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.zarr"
    first = extract(mixed_folder, out, shard_size=4)
    name = first.feature_set
    before = read_arrays(out, name)
    # Paths sort as broken/* (5 corrupt), juggling/* (3), riding bike/* (2): shards of 4 are
    # [4 corrupt], [1 corrupt + 3 good], [2 good]; the last one has nothing to retry.
    second = extract(mixed_folder, out, shard_size=4)
    assert second.extracted_now == 8 and second.failed == 5
    after = read_arrays(out, name)
    for array in ARRAYS:
        np.testing.assert_array_equal(before[array], after[array])
    shutil.copy(mixed_folder / "juggling/j1.mp4", mixed_folder / "juggling/j9.mp4")
    for corrupt in (mixed_folder / "broken").iterdir():
        corrupt.unlink()
    third = extract(mixed_folder, out, shard_size=4)
    assert third.videos == 11 and third.pending == 0
    arrays = read_arrays(out, name)
    assert str(arrays["video_id"][-1]) == "j9"
    np.testing.assert_array_equal(arrays["features"][-1], arrays["features"][5])  # j9 == j1
    np.testing.assert_array_equal(arrays["features"][8:10], before["features"][8:10])


def test_split_selects_videos_and_reports_unmatched_lines(
    video_folder: Path, tmp_path: Path
) -> None:
    split = tmp_path / "split"
    split.mkdir()
    (split / "trainlist01.txt").write_text("juggling/j2\njuggling/j1\n")
    (split / "vallist01.txt").write_text("fencing/f1\n")  # a class the folder lacks
    (split / "testlist01.txt").write_text("riding bike/r2\nriding bike/never_recorded\n")
    summary = extract(video_folder, tmp_path / "feats.zarr", split=str(split))
    assert summary.unmatched == ["fencing/f1", "riding bike/never_recorded"]
    feature_set = open_feature_set(str(tmp_path / "feats.zarr"))
    assert feature_set.video_ids == ["j2", "j1", "r2"]
    assert feature_set.attrs["split"] == str(split)


def test_a_different_config_never_writes_into_an_existing_feature_set(
    video_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, name="shared")
    before = read_arrays(out, "shared")
    with pytest.raises(FeatureStoreError, match="frames: stored 4, asked 2"):
        extract(video_folder, out, name="shared", frames=2)
    after = read_arrays(out, "shared")
    for array in ARRAYS:
        np.testing.assert_array_equal(before[array], after[array])


# ---- the command line ----


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def cli_options(videos: Path, out: Path) -> list[str]:
    return ["--videos", str(videos), "--out", str(out), *tiny_cli_options(**AT_64_PX)]


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_extract_then_info(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.zarr"
    result = cli("extract", *cli_options(video_folder, out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 5 and summary["failed"] == 0
    assert "videos/s" in result.stderr and "resnet10t-64px-4f-randinit" in result.stderr
    info = cli("info", str(out), "--json")
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)["feature_sets"][0]
    assert described["counts"] == {"videos": 5, "done": 5, "failed": 0, "pending": 0}
    assert described["size_bytes"] > 0 and described["attrs"]["backbone"] == "resnet10t"
    table = cli("info", str(out))
    assert table.exit_code == 0 and "resnet10t-64px-4f-randinit" in table.stdout


def test_cli_exit_status_1_when_a_video_failed(mixed_folder: Path, tmp_path: Path) -> None:
    result = cli("extract", *cli_options(mixed_folder, tmp_path / "feats.zarr"))
    assert result.exit_code == 1, result.output
    assert "5 failed videos" in result.stderr and "no video stream" in result.stderr


def test_cli_error_paths_are_one_line_and_exit_2(video_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.zarr"
    options = cli_options(video_folder, out)
    assert_one_line_error(cli("extract", "--out", str(out)), "missing --videos")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("extract", *cli_options(tmp_path / "empty", out)), "no videos found")
    assert_one_line_error(
        cli("extract", *options, "--split", "nope"), "unknown split 'nope'", "ssv2_OTAM"
    )
    assert_one_line_error(
        cli("extract", *options, "--backbone", "resnet_fifty"), "unknown backbone 'resnet_fifty'"
    )
    assert cli("extract", *options, "--name", "mine").exit_code == 0
    assert_one_line_error(
        cli("extract", *options, "--name", "mine", "--frames", "2"), "different config"
    )
    assert_one_line_error(cli("info", str(tmp_path / "nothing.zarr")), "no feature store")


def test_cli_extract_warns_that_an_odd_frame_count_rules_out_the_tmixer(
    video_folder: Path, tmp_path: Path
) -> None:
    result = cli("extract", *cli_options(video_folder, tmp_path / "f.zarr"), "--frames", "3")
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())  # rich may wrap the line
    assert "--frames 3" in warning and "even" in warning and "--no-tmixer" in warning


def test_cli_extract_says_how_many_videos_the_split_leaves_out(
    video_folder: Path, tmp_path: Path
) -> None:
    split = tmp_path / "split"
    split.mkdir()
    (split / "trainlist01.txt").write_text("juggling/j2\nriding bike/r2\n")
    (split / "vallist01.txt").write_text("fencing/f1\n")
    (split / "testlist01.txt").write_text("climbing/c1\n")
    options = cli_options(video_folder, tmp_path / "f.zarr")
    result = cli("extract", *options, "--split", str(split), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unlisted"] == 3
    said = " ".join(result.stderr.split())
    assert "3 videos in the folder are in no list of the split" in said
    assert "2 split lines name no file" in said
    assert "read trainlist01.txt (2 lines), vallist01.txt (1 line), testlist01.txt (1 line)" in said


def test_a_finished_extraction_shows_its_speed_even_when_it_was_quick() -> None:
    column = VideosPerSecond()
    progress = Progress(column, console=quiet())
    quick = progress.add_task("extract", total=3)
    progress.advance(quick, 3)  # all at once: rich's moving average never got two points
    assert column.render(progress.tasks[quick]).plain.endswith(" videos/s")
    assert "--" not in column.render(progress.tasks[quick]).plain
    nothing = progress.add_task("extract", total=0)
    progress.update(nothing, completed=0)
    assert column.render(progress.tasks[nothing]).plain == ""


# ---- kill and resume ----


KILL_RUN = {"shard_size": 2, "batch_size": 2, "name": "kill"}


def sact_extract(videos: Path, out: Path) -> subprocess.Popen[bytes]:
    """The same extraction as ``extract(videos, out, **KILL_RUN)``, as a separate process."""
    command = [sys.executable, "-m", "sact.cli", "extract", *cli_options(videos, out)]
    command += ["--shard-size", "2", "--batch-size", "2", "--name", "kill"]
    # The environment as is: its PYTHONPATH (if any) is what makes this checkout's sact importable.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def done_count(out: Path) -> int:
    try:
        return int(np.sum(zarr.open_group(str(out), mode="r")["kill"]["done"][:]))
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(
    video_folder: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    sources = [video_folder / "juggling/j1.mp4", video_folder / "juggling/j2.webm"]
    for index in range(12):
        shutil.copy(sources[index % 2], videos / f"v{index:02d}{sources[index % 2].suffix}")

    reference = tmp_path / "reference.zarr"
    assert extract(videos, reference, **KILL_RUN).done == 12

    killed = tmp_path / "killed.zarr"
    process = sact_extract(videos, killed)
    deadline = time.monotonic() + 120
    while done_count(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = done_count(killed)
    assert 2 <= interrupted < 12, f"the kill came too late ({interrupted} of 12 done)"

    resumed_run = extract(videos, killed, **KILL_RUN)
    assert resumed_run.extracted_now == 12 - interrupted and resumed_run.done == 12
    expected, resumed = read_arrays(reference, "kill"), read_arrays(killed, "kill")
    for array in ARRAYS:
        np.testing.assert_array_equal(expected[array], resumed[array], err_msg=array)
    assert resumed["done"].all() and len(set(resumed["video_id"].tolist())) == 12


# ---- what a GPU run changes: the compute dtype in the identity, shared memory, the writer ----


def gpu_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label this CPU's runs as a GPU's (float32 on TF32 tensor cores); they still compute here."""
    cuda = ComputePlan.for_device(torch.device("cuda"))
    plan = ComputePlan(cuda.compute_dtype, pinned=False, channels_last=False, side_streams=False)
    monkeypatch.setattr(ComputePlan, "for_device", classmethod(lambda cls, device: plan))


def test_cpu_and_gpu_features_never_share_a_feature_set(
    video_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, name="shared")
    cpu = extract(video_folder, out, name=None)
    before = read_arrays(out, "shared")
    gpu_arithmetic(monkeypatch)
    with pytest.raises(
        FeatureStoreError, match="compute_dtype: stored 'float32', asked 'tfloat32'"
    ):
        extract(video_folder, out, name="shared")
    for array in ARRAYS:
        np.testing.assert_array_equal(before[array], read_arrays(out, "shared")[array])
    gpu = extract(video_folder, out, name=None)  # the default name tells them apart
    assert (cpu.feature_set, gpu.feature_set) == (
        "resnet10t-64px-4f-randinit",
        "resnet10t-64px-4f-randinit-tf32",
    )


def test_a_feature_set_from_before_the_compute_dtype_resumes_its_own_extraction(
    video_folder: Path, tmp_path: Path
) -> None:
    reference, old = tmp_path / "reference.zarr", tmp_path / "old.zarr"
    extract(video_folder, reference, name="old", shard_size=2)
    extract(video_folder, old, name="old", shard_size=2)
    group = zarr.open_group(str(old), mode="r+")["old"]
    # as written before: compute_dtype recorded as provenance only, and a shard left to do
    attrs = dict(group.attrs["sact"])
    attrs["identity"] = [key for key in attrs["identity"] if key != "compute_dtype"]
    group.attrs["sact"] = attrs
    group["done"][2:4] = False
    assert extract(video_folder, old, name="old", shard_size=2).extracted_now == 2
    expected, resumed = read_arrays(reference, "old"), read_arrays(old, "old")
    for array in ARRAYS:
        np.testing.assert_array_equal(expected[array], resumed[array], err_msg=array)

    group.attrs["sact"] = {**attrs, "compute_dtype": "bfloat16"}  # an old GPU run's
    with pytest.raises(FeatureStoreError, match="compute_dtype: stored 'bfloat16'"):
        extract(video_folder, old, name="old", shard_size=2)


def test_shared_memory_too_small_for_the_workers_is_one_line_before_they_start(
    video_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = 8 * 3 * 224 * 224  # T=8 crops of ResNet-50's 224 px
    needed = shared_memory_needed(workers=8, clip_bytes=clip, batch_videos=32, processes=8)
    assert needed == 8 * (8 * 4 + 32) * clip  # 8 ranks on one machine, 8 workers each
    docker_default = 64 * 2**20
    with pytest.raises(SactError, match=r"--shm-size=2g, or use fewer --workers"):
        check_shared_memory(workers=8, clip_bytes=clip, batch_videos=32, processes=8,
                            free_bytes=docker_default)  # fmt: skip
    check_shared_memory(
        workers=4, clip_bytes=clip, batch_videos=32, processes=1, free_bytes=docker_default
    )  # fmt: skip  (58 MB)
    check_shared_memory(workers=0, clip_bytes=clip, batch_videos=32, processes=8, free_bytes=0)

    small = os.statvfs_result((4096, 4096, 16384, 0, 0, 0, 0, 0, 0, 255))  # 64 MB, all used
    monkeypatch.setattr("sact.extract.clips.os.statvfs", lambda path: small)
    result = cli("extract", *cli_options(video_folder, tmp_path / "f.zarr"), "--workers", "2")
    assert_one_line_error(result, "/dev/shm has 0 MB free", "--shm-size")
    assert not (tmp_path / "f.zarr").exists()


def test_the_background_writer_writes_what_the_loop_would(video_folder: Path, tmp_path: Path):
    inline, background = tmp_path / "inline.zarr", tmp_path / "background.zarr"
    extract(video_folder, inline, name="w", shard_size=2, batch_size=3, write_queue=0)
    extract(video_folder, background, name="w", shard_size=2, batch_size=3, write_queue=1)
    expected, written = read_arrays(inline, "w"), read_arrays(background, "w")
    for array in ARRAYS:
        np.testing.assert_array_equal(expected[array], written[array], err_msg=array)
