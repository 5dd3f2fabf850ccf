"""Fault-injection scenarios on a store that others read while it is written (tests.faults.scenarios
has the kills): flaky object storage, and load.

    flaky_object_storage   `sact extract` into the local S3 server behind FlakyS3Proxy (drops,
                           500, 503, slow answers): it completes through the retries, or stops in
                           one line and the same command resumes; then the bucket recovers
    object_storage_outage  the proxy answers 503 to everything from a seeded request on: the
                           run stops in one line, and resumes once the bucket is back
    writers_and_readers    three `sact extract` runs at once on one store (local disk or S3),
                           started a seeded moment apart: every video extracted exactly once

Meanwhile two ``DoneRowReader`` threads read the store over and over, as trainers sharing it do:
every row they find done must hold exactly the clean run's values (never half a shard). Each
scenario returns one ``Injection``; nothing may be lost or duplicated.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from typer.testing import CliRunner

from sact.cli import app
from tests.faults.flaky_s3 import FaultRates, FlakyS3Proxy
from tests.faults.s3 import local_s3_server, make_bucket, s3_environment
from tests.faults.scenarios import (
    COMMAND_TIMEOUT_S,
    FEATURE_SET,
    SHARD_SIZE,
    Injection,
    extract_arguments,
    failure_message,
    one_thread_environment,
    run_sact,
    store_arrays,
    store_differences,
    videos_lost,
    write_kill_videos,
)

# What a busy bucket on a bad day does to a request: one in ten meets a fault.
FLAKY_RATES = FaultRates(
    drop_before=0.02, drop_after=0.02, error_500=0.02, error_503=0.02, slow=0.02
)
# Runs of the same command while the bucket stays flaky, before it recovers.
FLAKY_ATTEMPTS = 4
READERS = 2
WRITERS = 3
READ_PAUSE_S = 0.05
# The latest start of a writer after the first, drawn per writer (seconds).
WRITER_START_SPREAD_S = 1.0


class DoneRowReader:
    """A thread reading feature set ``name`` of ``location`` over and over until stopped: every
    row found done must equal the clean run's (``expected``, by video id) in features, error,
    frame_index and num_frames."""

    def __init__(self, location: str, expected: dict[str, np.ndarray], name: str) -> None:
        self.location = location
        self.expected = expected
        self.name = name
        self.position = {str(video): row for row, video in enumerate(expected["video_id"])}
        self.reads = 0  # passes over the store that found the feature set
        self.rows_checked = 0
        self.wrong: list[str] = []  # done rows whose values were not the clean run's
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read_until_stopped, daemon=True)

    def _read_once(self) -> None:
        from sact.store.feature_set import FeatureStoreError
        from sact.store.zarr_store import open_zarr_feature_set

        try:
            features = open_zarr_feature_set(self.location, self.name)
        except (FeatureStoreError, KeyError, FileNotFoundError):
            return  # not created yet
        rows = np.flatnonzero(features.done)
        values = features.read(rows)  # (n, T, P, D)
        self.reads += 1
        for row, value in zip(rows, values, strict=True):
            video = features.video_ids[row]
            at = self.position[video]
            same = (
                np.array_equal(value, self.expected["features"][at])
                and features.errors[row] == self.expected["error"][at]
                and np.array_equal(features.frame_index[row], self.expected["frame_index"][at])
                and features.num_frames[row] == self.expected["num_frames"][at]
            )
            self.rows_checked += 1
            if not same:
                self.wrong.append(video)

    def _read_until_stopped(self) -> None:
        while not self.stopping.is_set():
            try:
                self._read_once()
            except Exception as error:  # a reader must never crash on a store being written
                self.wrong.append(f"read failed: {type(error).__name__}: {error}")
            self.stopping.wait(READ_PAUSE_S)

    def __enter__(self) -> DoneRowReader:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self.thread.join()

    def describe(self) -> str:
        return f"{self.reads} reads, {self.rows_checked} done rows checked, {len(self.wrong)} wrong"


@contextlib.contextmanager
def readers(location: str, expected: dict[str, np.ndarray]) -> Iterator[list[DoneRowReader]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(DoneRowReader(location, expected, FEATURE_SET))
            for _ in range(READERS)
        ]


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment updated with ``values`` in the block (S3 clients read their
    endpoint from it when they are made: fsspec's cached filesystems are dropped on both sides)."""
    import s3fs

    saved = {name: os.environ.get(name) for name in values}
    s3fs.S3FileSystem.clear_instance_cache()
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        s3fs.S3FileSystem.clear_instance_cache()


def claims_held(location: str, shards: int) -> list[str]:
    """Shard topics whose latest claim is still held (by a run that is gone: none may be)."""
    from sact.common.claims import ClaimBook
    from sact.extract.shard_writer import shard_topic
    from sact.store.zarr_store import open_root

    book = ClaimBook(open_root(location, mode="a"), FEATURE_SET)
    topics = [shard_topic(shard) for shard in range(shards)]
    return [topic for topic in topics if book.holder_of(topic) is not None]


def clean_reference(workdir: Path, videos: Path, **options: object) -> dict[str, np.ndarray]:
    """The arrays of a clean `sact extract` made in this process on one torch thread, as the runs
    under test make theirs: a process of its own would import torch, timm and torchvision again
    (seconds; the suite's time is short)."""
    reference = workdir / "reference.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = CliRunner().invoke(app, extract_arguments(videos, reference, **options))
    finally:
        torch.set_num_threads(threads)
    if clean.exit_code not in (0, 1):  # 1: the broken files failed, as they should
        raise RuntimeError(f"the clean run failed (exit {clean.exit_code}): {clean.output[-2000:]}")
    return store_arrays(str(reference), FEATURE_SET)


def _verdict(
    location: str, reference: str, shards: int, reading: list[DoneRowReader]
) -> tuple[list[str], int]:
    """What is wrong with the store after the runs (nothing, when all went well), and how many
    videos were lost or differ."""
    problems = []
    differences = store_differences(location, reference, FEATURE_SET)
    if differences:
        problems.append(f"differs from a clean run in {differences}")
    held = claims_held(location, shards)
    if held:
        problems.append(f"claims still held: {held}")
    wrong = [video for reader in reading for video in reader.wrong]
    if wrong:
        problems.append(f"readers saw wrong done rows: {wrong[:5]}")
    return problems, videos_lost(location, reference, FEATURE_SET)


def flaky_object_storage(
    workdir: Path, *, seed: int, rates: FaultRates = FLAKY_RATES, good_videos: int = 6
) -> Injection:
    """`sact extract` into S3 through the flaky proxy, run again while it stops (at most
    FLAKY_ATTEMPTS times), then once more after the bucket recovers if it has not finished."""
    videos = write_kill_videos(workdir / "videos", good=good_videos)
    expected = clean_reference(workdir, videos)
    shards = -(-len(expected["video_id"]) // SHARD_SIZE)
    stops: list[str] = []
    with local_s3_server() as server, environment(s3_environment(server)):
        location = f"{make_bucket()}/feats.zarr"
        arguments = extract_arguments(videos, location)
        proxy = FlakyS3Proxy(server, rates, seed=seed)
        with proxy as endpoint, readers(location, expected) as reading:
            through_proxy = s3_environment(endpoint)
            for _ in range(FLAKY_ATTEMPTS):
                completed = run_sact(arguments, environment=through_proxy)
                if completed.returncode in (0, 1):
                    break
                stops.append(failure_message(completed))
            else:
                proxy.set_rates(FaultRates())  # the bucket recovers
                completed = run_sact(arguments, environment=through_proxy)
        problems, lost = _verdict(location, str(workdir / "reference.zarr"), shards, reading)
        read = "; readers: " + ", ".join(reader.describe() for reader in reading)
    bad_stops = [stop for stop in stops if not stop.startswith("error: extraction into")]
    if completed.returncode not in (0, 1):
        problems.append(f"did not finish once the bucket recovered: {failure_message(completed)}")
    if bad_stops:
        problems.append(f"stopped without the one line: {bad_stops[0]}")
    requests = sum(proxy.counts.values())
    moment = (
        f"seed {seed}: {proxy.injected} of {requests} requests faulted "
        f"({', '.join(f'{fate} {n}' for fate, n in sorted(proxy.counts.items()))})"
    )
    if problems:
        outcome = "; ".join(problems)
    elif stops:
        outcome = (
            f"stopped {len(stops)} time(s) in one line ({stops[0].removeprefix('error: ')}); "
            "resumed equal"
        )
    else:
        outcome = "completed through the retries, equal to a clean run"
    return Injection(
        f"flaky object storage ({rates.describe()})", moment + read, outcome, not problems, lost
    )


def _start_writer(arguments: list[str], environment_values: Mapping[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sact.cli", *arguments, "--json"],
        env={**one_thread_environment(), **environment_values},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def writers_and_readers(
    workdir: Path, *, seed: int, on_s3: bool, good_videos: int = 10
) -> Injection:
    """WRITERS `sact extract` runs on one store (shards of one video), each started a seeded
    moment after the first, READERS readers meanwhile: the store must equal a clean run's, and
    the videos the runs say they extracted must add up to the store's, each once."""
    videos = write_kill_videos(workdir / "videos", good=good_videos)
    one_video_shards = {"shard_size": 1}
    expected = clean_reference(workdir, videos, **one_video_shards)
    count = len(expected["video_id"])
    starts = np.sort(np.random.default_rng(seed).uniform(0, WRITER_START_SPREAD_S, size=WRITERS))
    with contextlib.ExitStack() as stack:
        extra: dict[str, str] = {}
        if on_s3:
            server = stack.enter_context(local_s3_server())
            extra = s3_environment(server)
            stack.enter_context(environment(extra))
            location = f"{make_bucket()}/feats.zarr"
        else:
            location = str(workdir / "shared.zarr")
        arguments = extract_arguments(videos, location, **one_video_shards)
        with readers(location, expected) as reading:
            began = time.monotonic()
            writers = []
            for start in starts:
                time.sleep(max(0.0, began + start - time.monotonic()))
                writers.append(_start_writer(arguments, extra))
            finished = [writer.communicate(timeout=COMMAND_TIMEOUT_S) for writer in writers]
        problems, lost = _verdict(location, str(workdir / "reference.zarr"), count, reading)
        read = "; readers: " + ", ".join(reader.describe() for reader in reading)
    codes = [writer.returncode for writer in writers]
    # Each run's --json summary: how many videos it extracted (0 for a run that said nothing).
    shares = [int(json.loads(out)["extracted_now"]) if out.strip() else 0 for out, _ in finished]
    if any(code not in (0, 1) for code in codes):
        errors = [err.strip()[-300:] for _, err in finished]
        problems.append(f"exit statuses {codes}: {errors}")
    elif sum(shares) != count:
        problems.append(f"the runs extracted {shares} videos, {sum(shares)} for {count}")
    where = "the local S3 server" if on_s3 else "local disk"
    moment = (
        f"seed {seed}: {WRITERS} writers started at "
        + ", ".join(f"{start:.2f}" for start in starts)
        + f" s on {where}, extracted {shares} of {count} videos"
    )
    outcome = (
        "; ".join(problems) or "every video extracted exactly once, readers saw only done rows"
    )
    return Injection(
        f"{WRITERS} writers and {READERS} readers on {where}",
        moment + read,
        outcome,
        not problems,
        lost,
    )


# The outage starts after this many requests (drawn per seed): the run has claimed and written
# some shards by then, and has more to do.
OUTAGE_AFTER = (80, 240)
OUTAGE_POLL_S = 0.05


def object_storage_outage(workdir: Path, *, seed: int, good_videos: int = 6) -> Injection:
    """`sact extract` into S3 through the proxy, which starts answering every request with 503
    after a seeded number of requests (the bucket goes down mid-run): the run must stop in one
    line; once the bucket is back, the same command must finish equal to a clean run."""
    videos = write_kill_videos(workdir / "videos", good=good_videos)
    expected = clean_reference(workdir, videos)
    shards = -(-len(expected["video_id"]) // SHARD_SIZE)
    after = int(np.random.default_rng(seed).integers(*OUTAGE_AFTER))
    with local_s3_server() as server, environment(s3_environment(server)):
        location = f"{make_bucket()}/feats.zarr"
        arguments = extract_arguments(videos, location)
        proxy = FlakyS3Proxy(server, FaultRates(), seed=seed)
        with proxy as endpoint, readers(location, expected) as reading:
            through_proxy = s3_environment(endpoint)
            run = _start_writer(arguments, through_proxy)
            while run.poll() is None and sum(proxy.counts.values()) < after:
                time.sleep(OUTAGE_POLL_S)
            proxy.set_rates(FaultRates(error_503=1.0))
            out, err = run.communicate(timeout=COMMAND_TIMEOUT_S)
            stopped = subprocess.CompletedProcess(run.args, run.returncode, out, err)
            proxy.set_rates(FaultRates())  # the bucket is back
            resumed = run_sact(arguments, environment=through_proxy)
        problems, lost = _verdict(location, str(workdir / "reference.zarr"), shards, reading)
        read = "; readers: " + ", ".join(reader.describe() for reader in reading)
    said = failure_message(stopped)
    if stopped.returncode in (0, 1):
        problems.append(f"the run finished before the outage ({after} requests)")
    elif stopped.returncode != 2 or not said.startswith("error: extraction into"):
        problems.append(f"the outage did not stop the run in one line: {said}")
    if resumed.returncode not in (0, 1):
        problems.append(f"did not resume once the bucket was back: {failure_message(resumed)}")
    moment = f"seed {seed}: every request answered 503 from request {after} on" + read
    outcome = "; ".join(problems) or (
        f"stopped in one line ({said.removeprefix('error: ')}); resumed equal once the bucket "
        "was back"
    )
    return Injection(
        "object storage down mid-run (503 to everything)", moment, outcome, not problems, lost
    )
