"""Silent corruption for the fault-injection suite: a byte flipped in stored feature chunks, as a
bad disk or a bad copy does, found by the checksums of store format 2 (docs/STORE.md).

    silent_corruption(workdir, seed=0)

extracts the suite's videos (shards of one video), flips one byte in the features chunk of
``FLIPS`` seeded usable videos (sact.testing.damage), then checks, as a user would meet it:

1. reading the store (``sact export``, which reads every feature) stops in one line naming a
   damaged video, instead of handing its features on;
2. ``sact info --verify --json`` lists exactly the damaged videos and marks them pending;
3. the same ``sact extract`` command redoes those videos and nothing else (besides the broken
   files, which every run retries), and the store is then bitwise a clean run's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tests.faults.scenarios import (
    FEATURE_SET,
    Injection,
    extract_arguments,
    failure_message,
    run_sact,
    store_arrays,
    store_differences,
    videos_lost,
    write_kill_videos,
)

FLIPS = 2  # damaged videos per store


def silent_corruption(workdir: Path, *, seed: int, good_videos: int = 6) -> list[Injection]:
    from sact.testing.damage import flip_byte

    videos = write_kill_videos(workdir / "videos", good=good_videos)
    reference = workdir / "reference.zarr"
    arguments = extract_arguments(videos, reference, shard_size=1)
    if run_sact(arguments).returncode not in (0, 1):
        raise RuntimeError("the clean run failed")
    store = workdir / "feats.zarr"
    shutil.copytree(reference, store)
    clean = store_arrays(str(reference), FEATURE_SET)
    usable = np.flatnonzero(clean["done"] & (clean["error"] == ""))
    rows = sorted(int(row) for row in np.random.default_rng(seed).choice(usable, FLIPS, False))
    damaged_ids = {str(clean["video_id"][row]) for row in rows}
    for row in rows:
        flip_byte(store, FEATURE_SET, row)
    problems = []
    read = run_sact(["export", str(store), "--to", str(workdir / "copy.h5")])
    said = failure_message(read)
    if read.returncode != 2 or not said.startswith("error:"):
        problems.append(f"the read was not stopped in one line: {said}")
    elif not any(repr(video) in said for video in damaged_ids):
        problems.append(f"the read's line names no damaged video: {said}")
    verified = run_sact(["info", str(store), "--verify", "--json"])
    listed = set()
    if verified.stdout.strip():
        report = json.loads(verified.stdout)["verify"]
        listed = {damage["video_id"] for damage in report["damaged"]}
    if listed != damaged_ids:
        problems.append(f"verify listed {sorted(listed)}, damaged {sorted(damaged_ids)}")
    redo = run_sact([*extract_arguments(videos, store, shard_size=1), "--json"])
    redone = json.loads(redo.stdout)["extracted_now"] if redo.stdout.strip() else None
    failed = int(np.sum(clean["done"] & (clean["error"] != "")))  # retried by every run
    if redone != FLIPS + failed:
        problems.append(
            f"the next extract redid {redone} videos for {FLIPS} damaged and {failed} failed"
        )
    differences = store_differences(str(store), str(reference), FEATURE_SET)
    if differences:
        problems.append(f"then differs from a clean run in {differences}")
    moment = f"seed {seed}: a byte flipped in the features chunks of {sorted(damaged_ids)}"
    outcome = "; ".join(problems) or (
        f"read refused ({said.removeprefix('error: ')[:160]}...); verify listed them; the next "
        f"extract redid those {FLIPS} alone (and retried the {failed} broken files): resumed "
        "equal"
    )
    lost = videos_lost(str(store), str(reference), FEATURE_SET)
    return [Injection("a flipped byte in a feature chunk", moment, outcome, not problems, lost)]
