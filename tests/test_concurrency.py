"""Concurrent writers: shard claims are atomic on a local directory and on a real S3 server, and a
claim left behind by a killed run does not block forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from sact.common.claims import ClaimBook, ClaimError, RunInfo
from sact.extract.shard_writer import shard_topic
from sact.store.backends import open_feature_set
from sact.store.feature_set import CANONICAL
from sact.store.zarr_store import open_root
from sact.testing.extraction import extract_in_this_process, tiny_cli_options
from tests.faults.s3 import make_bucket

TOPICS = [shard_topic(shard) for shard in range(12)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        return f"{make_bucket()}/feats.zarr"
    return str(tmp_path / "feats.zarr")


def book(location: str, run: RunInfo | None = None, **options: object) -> ClaimBook:
    return ClaimBook(open_root(location, mode="a"), "tiny", run=run, **options)  # type: ignore[arg-type]


def _claim_all(location: str, start_at: float) -> list[str]:
    """One run in its own process: claim every topic it can, starting at the same instant."""
    claims = book(location)
    time.sleep(max(0.0, start_at - time.time()))
    return [topic for topic in TOPICS if claims.try_claim(topic)]


def test_racing_runs_never_claim_the_same_shard(location: str) -> None:
    open_root(location, mode="a")
    start_at = time.time() + 1.5  # after both processes have imported and opened the store
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        won = list(pool.map(_claim_all, [location] * 2, [start_at] * 2))
    assert sorted(won[0] + won[1]) == TOPICS  # every shard claimed once, by exactly one run


STORES_OPENED_AT_ONCE = 20


def _open_new_stores(folder: str, start_at: float) -> int:
    """One process opening fresh stores for writing at the same instants as its rivals."""
    time.sleep(max(0.0, start_at - time.time()))
    for index in range(STORES_OPENED_AT_ONCE):
        open_root(f"{folder}/store{index}.zarr", mode="a")
    return STORES_OPENED_AT_ONCE


def test_processes_creating_the_same_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    # torchrun's ranks and a lab's independent runs all open --out for writing as they start.
    start_at = time.time() + 1.5
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        opened = list(pool.map(_open_new_stores, [str(tmp_path)] * 4, [start_at] * 4))
    assert opened == [STORES_OPENED_AT_ONCE] * 4
    for index in range(STORES_OPENED_AT_ONCE):
        assert open_root(str(tmp_path / f"store{index}.zarr"), mode="r").attrs["sact"]


def test_a_live_holder_blocks_and_is_named(location: str) -> None:
    first = book(location)
    second = book(location)
    assert first.try_claim("setup")
    assert not second.try_claim("setup")
    assert second.holder_of("setup") == first.run
    with pytest.raises(ClaimError, match=f"pid {first.run.pid}"), second.hold("setup", wait_s=0):
        pass
    first.release("setup")
    with second.hold("setup", wait_s=0):
        assert second.current("setup").generation == 1  # type: ignore[union-attr]
    assert second.holder_of("setup") is None


def test_a_killed_run_on_this_host_is_taken_over(location: str) -> None:
    finished = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert finished.returncode == 0
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    killed = RunInfo("killed-run", RunInfo.this_process().host, dead_pid.pid, time.time())
    ghost = book(location, killed)
    assert ghost.try_claim(TOPICS[0])
    survivor = book(location)
    assert survivor.try_claim(TOPICS[0])  # the holder's process is gone: the claim is free
    assert survivor.current(TOPICS[0]).holder == survivor.run  # type: ignore[union-attr]
    assert not ghost.still_holds(TOPICS[0])  # and had it lived, it would know before writing


def test_a_silent_run_on_another_host_expires(location: str) -> None:
    now = [1000.0]
    elsewhere = RunInfo("remote-run", "another-host", 1, now[0])
    remote = book(location, elsewhere, stale_after=60.0, clock=lambda: now[0])
    assert remote.try_claim(TOPICS[1])
    local = book(location, stale_after=60.0, clock=lambda: now[0])
    now[0] += 59.0
    assert not local.try_claim(TOPICS[1])
    remote.refresh()  # a live run renews its heartbeat ...
    now[0] += 59.0
    assert not local.try_claim(TOPICS[1])
    now[0] += 2.0  # ... a killed one does not, and its claim goes stale
    assert local.try_claim(TOPICS[1])


def test_keep_alive_beats_and_releases(tmp_path: Path) -> None:
    claims = book(str(tmp_path / "feats.zarr"), stale_after=0.2)
    with claims.keep_alive():
        assert claims.try_claim(TOPICS[2])
        first_beat = claims.current(TOPICS[2]).heartbeat  # type: ignore[union-attr]
        time.sleep(0.3)
        assert claims.current(TOPICS[2]).heartbeat > first_beat  # type: ignore[union-attr]
    assert claims.current(TOPICS[2]).released  # type: ignore[union-attr]
    assert claims.held == {}


# ---- two `sact extract` runs at once, end to end ----


def start_extract(videos: Path, out: Path, *options: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PYTHONPATH kept: this checkout's sact
    command = [
        sys.executable,
        "-m",
        "sact.cli",
        "extract",
        "--videos",
        str(videos),
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        [*command, *tiny_cli_options(shard_size=1), *options, "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict:
    """The run's summary (``sact extract --json``)."""
    output, errors = process.communicate(timeout=300)
    assert process.returncode == 0, output + errors
    return json.loads(output)


def extract_here(videos: Path, out: Path, **options: object) -> str:
    """The same extraction in this process, on one thread like the subprocesses; what it said."""
    return extract_in_this_process(videos, out, shard_size=1, **options)


@pytest.mark.slow
def test_two_extract_runs_at_once_share_the_work(video_folder: Path, tmp_path: Path) -> None:
    alone, shared = tmp_path / "alone.zarr", tmp_path / "shared.zarr"
    extract_here(video_folder, alone)
    runs = [start_extract(video_folder, shared) for _ in range(2)]
    summaries = [finish(run) for run in runs]
    # Each video was extracted by exactly one of the two runs ...
    assert sum(summary["extracted_now"] for summary in summaries) == 5
    together, reference = open_feature_set(str(shared)), open_feature_set(str(alone))
    assert together.video_ids == reference.video_ids  # ... and appended to the set only once
    assert together.done.all()
    everything = np.arange(len(reference))
    np.testing.assert_array_equal(together.read(everything), reference.read(everything))
    np.testing.assert_array_equal(together.frame_index, reference.frame_index)
    claims = book(str(shared))
    assert all(claims.holder_of(shard_topic(shard)) is None for shard in range(5))  # all released


@pytest.mark.slow
def test_two_extract_runs_at_once_share_the_work_of_every_view(
    video_folder: Path, tmp_path: Path
) -> None:
    alone, shared = tmp_path / "alone.zarr", tmp_path / "shared.zarr"
    extract_here(video_folder, alone, random_views=2)
    runs = [start_extract(video_folder, shared, "--random-views", "2") for _ in range(2)]
    summaries = [finish(run) for run in runs]
    reference, together = open_feature_set(str(alone)), open_feature_set(str(shared))
    views = reference.view_names()
    assert views == [CANONICAL, "jitter_crop-random_d0", "jitter_crop-random_d1"]
    assert together.view_names() == views and together.video_ids == reference.video_ids
    for number, view in enumerate(views):
        # each (view, video) extracted by exactly one of the two runs, bitwise as by one run
        assert [summary["views"][number]["view"] for summary in summaries] == [view, view]
        assert sum(summary["views"][number]["extracted_now"] for summary in summaries) == 5
        assert together.usable_in(view).all()
        everything = np.arange(len(reference))
        np.testing.assert_array_equal(
            together.read(everything, view), reference.read(everything, view)
        )
        np.testing.assert_array_equal(
            together.view(view).frame_index, reference.view(view).frame_index
        )
    claims = book(str(shared))
    assert all(
        claims.holder_of(shard_topic(shard, view=view)) is None
        for shard in range(5)
        for view in views
    )

    # resume per view: one shard of one view pending, two runs again, only it is redone
    group = open_root(str(shared), mode="a")["tiny"]["views"]["jitter_crop-random_d1"]
    group["done"][3:4] = np.zeros(1, dtype=bool)
    runs = [start_extract(video_folder, shared, "--random-views", "2") for _ in range(2)]
    again = [[view["extracted_now"] for view in finish(run)["views"]] for run in runs]
    assert sorted(again) == [[0, 0, 0], [0, 0, 1]]
    resumed = open_feature_set(str(shared))
    assert resumed.usable_in("jitter_crop-random_d1").all()
    np.testing.assert_array_equal(
        resumed.read([3], "jitter_crop-random_d1"), reference.read([3], "jitter_crop-random_d1")
    )


def test_a_killed_runs_claims_do_not_block(video_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "feats.zarr"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    killed = RunInfo("killed-run", RunInfo.this_process().host, finished.pid, time.time())
    ghost = book(str(store), killed)
    assert ghost.try_claim("setup") and ghost.try_claim(shard_topic(0))
    extract_here(video_folder, store)
    assert open_feature_set(str(store)).done.all()


def test_shards_held_by_a_live_run_are_skipped_and_it_is_named(
    video_folder: Path, tmp_path: Path
) -> None:
    store = tmp_path / "feats.zarr"
    extract_here(video_folder, store)  # creates the feature set: 5 shards of one video
    group = open_root(str(store), mode="a")["tiny"]
    group["done"][1:3] = np.zeros(2, dtype=bool)  # shards 1 and 2 to do again
    colleague = RunInfo("c0ffee00" * 4, "gpu-node-7", 4242, time.time())
    assert book(str(store), colleague).try_claim(shard_topic(1))  # alive: fresh heartbeat

    said = extract_here(video_folder, store)
    assert "1 shard(s) skipped: being extracted by run c0ffee00 (host gpu-node-7, pid 4242" in said
    done = open_feature_set(str(store)).done
    assert done.tolist() == [True, False, True, True, True]  # shard 1 left to its holder
