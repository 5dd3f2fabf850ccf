"""The fault-injection suite's kill scenarios, shared by their quick tests (tests/test_kills.py) and
the whole suite (``python -m tests.faults.reliability``, which writes docs/RELIABILITY.md with
``--out``).

Each scenario injects one kind of fault into real `sact` commands, seeded and bounded in time, and
returns one ``Injection`` per fault injected: when and how, what sact did (the outcome), whether
that is what sact owes this fault, and how many videos or training steps were lost or duplicated.

    kill_extraction      `sact extract` SIGKILLed at seeded file-system operations, then resumed
    kill_training        `sact train` SIGKILLed likewise (mid-checkpoint included), then --resume
    kill_training_twice  killed between a checkpoint's renames, then again while resuming
    kill_one_writer      one of two concurrent `sact extract` runs SIGKILLed

and, in modules of their own beside this one, each with its quick tests: a full disk (full_disk,
in a mount namespace; tests/test_full_disk.py), a flaky S3 (flaky_s3; test_flaky_s3.py), a shared
store (shared_store; test_shared_store.py), bad videos (bad_videos; test_bad_videos.py), flipped
bytes (corruption; test_corruption.py) and hostile inputs (hostile; test_hostile_inputs.py).

Processes run with one torch thread (``OMP_NUM_THREADS=1``), so their float sums happen in the same
order and stores and weights can be compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sact.common.claims import CLAIMS_PREFIX
from sact.testing.extraction import tiny_cli_options
from tests.faults.kills import Operation, read_trace

RESUMED_EQUAL = "resumed equal"
# Every array of a feature set: a resumed store must equal a clean run's in all of them.
STORE_ARRAYS = (
    "video_id", "path", "label", "num_frames", "frame_index", "error", "done", "features",
)  # fmt: skip
COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Injection:
    """One fault injected, and what came of it."""

    fault: str  # the kind of fault: the row of docs/RELIABILITY.md it counts in
    moment: str  # when or where it struck
    outcome: str  # what sact did: RESUMED_EQUAL, "refused: <message>", "recorded: <reason>", ...
    expected: bool  # whether that is the outcome sact owes this fault
    lost: int = 0  # videos or steps lost or duplicated (0 when nothing was)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# the checkout's root: child processes import this suite as `tests.faults` from there
REPOSITORY = Path(__file__).resolve().parents[2]


def suite_environment() -> dict[str, str]:
    """This environment, with the checkout's root first on PYTHONPATH so that child processes
    (`python -m tests.faults.kills`, ...) import this suite wherever they run."""
    paths = [str(REPOSITORY), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def one_thread_environment() -> dict[str, str]:
    """The suite's environment (suite_environment) on one thread."""
    return {**suite_environment(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_sact(
    arguments: Sequence[str], *, environment: Mapping[str, str] | None = None, **options: Any
) -> subprocess.CompletedProcess[str]:
    """``sact ARGUMENTS`` as a separate process, its output captured; ``environment`` adds to
    (or overrides) this one."""
    return subprocess.run(
        [sys.executable, "-m", "sact.cli", *arguments],
        env={**one_thread_environment(), **(environment or {})},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        **options,
    )


def run_killed(
    arguments: Sequence[str], *, under: Path, at: int | None, trace: Path
) -> subprocess.CompletedProcess[str]:
    """``sact ARGUMENTS`` killed just before its operation ``at`` under ``under`` (None: never),
    each operation traced to ``trace`` (tests.faults.kills)."""
    killer = [sys.executable, "-m", "tests.faults.kills", "--under", str(under)]
    killer += ["--trace", str(trace)] + (["--at", str(at)] if at is not None else [])
    return subprocess.run(
        [*killer, "--", *arguments],
        env=one_thread_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_message(completed: subprocess.CompletedProcess[str]) -> str:
    """What a failed command said: its one error line, or all of its stderr when it said more."""
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    if len(errors) == 1 and "Traceback" not in completed.stderr:
        return errors[0]
    return f"exit {completed.returncode}: {completed.stderr.strip()[-2000:]}"


def choose_moments(
    operations: list[Operation],
    count: int,
    rng: np.random.Generator,
    *,
    must: dict[str, Callable[[Operation], bool]],
) -> list[tuple[int, str]]:
    """``count`` operation indices to kill before, drawn by ``rng``: first one operation meeting
    each condition of ``must`` (named by its key, in order, as many as ``count`` allows), then
    others, all distinct, in order."""
    chosen: dict[int, str] = {}
    for label, condition in list(must.items())[:count]:
        candidates = [op.index for op in operations if condition(op) and op.index not in chosen]
        if candidates:
            chosen[int(rng.choice(candidates))] = label
    rest = [op.index for op in operations if op.index not in chosen]
    extra = max(0, min(count - len(chosen), len(rest)))
    for index in rng.choice(rest, size=extra, replace=False):
        chosen[int(index)] = "anywhere"
    return sorted(chosen.items())


def path_starts(prefix: str, kind: str | None = None) -> Callable[[Operation], bool]:
    """An operation on a path starting with ``prefix`` (and of ``kind``, if given)."""
    return lambda op: op.path.startswith(prefix) and kind in (None, op.kind)


def describe_kill(trace: Path, label: str, total: int) -> str:
    """Where a killed run died: the operation it was killed before, as its own trace says."""
    operations = read_trace(trace) if trace.exists() else []
    if not operations:
        return f"{label}: before its first operation"
    last = operations[-1]
    return f"{label}: before op {last.index}/{total}, {last.kind} {last.path}"


# ---- feature stores -------------------------------------------------------------------------


def store_arrays(location: str, name: str) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(location, mode="r")[name]
    return {array: np.asarray(group[array][:]) for array in STORE_ARRAYS}


def store_differences(location: str, reference: str, name: str) -> list[str]:
    """The arrays in which the feature set ``name`` of ``location`` differs from ``reference``."""
    try:
        got = store_arrays(location, name)
    except (KeyError, FileNotFoundError, ValueError) as error:
        return [f"unreadable: {error}"]
    expected = store_arrays(reference, name)
    return [
        array
        for array in STORE_ARRAYS
        if got[array].shape != expected[array].shape
        or not np.array_equal(got[array], expected[array])
    ]


def videos_lost(location: str, reference: str, name: str) -> int:
    """Videos of the clean run missing from ``location`` or differing there (0 when all equal)."""
    try:
        got = store_arrays(location, name)
    except (KeyError, FileNotFoundError, ValueError):
        return len(store_arrays(reference, name)["video_id"])
    expected = store_arrays(reference, name)
    if got["video_id"].shape != expected["video_id"].shape:
        return abs(len(got["video_id"]) - len(expected["video_id"])) or len(expected["video_id"])
    differs = np.zeros(len(expected["video_id"]), dtype=bool)
    for array in STORE_ARRAYS:
        unequal = got[array] != expected[array]
        differs |= unequal.reshape(len(differs), -1).any(axis=1)
    return int(differs.sum())


def claims_still_held(location: str, name: str) -> list[str]:
    """Topics of ``name`` whose latest claim is neither released nor free (its holder is gone)."""
    from sact.common.claims import ClaimBook
    from sact.store.zarr_store import open_root

    claims = ClaimBook(open_root(location, mode="a"), name)
    folder = Path(location) / CLAIMS_PREFIX / name
    topics = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    return [topic for topic in topics if claims.holder_of(topic) is not None]


# ---- kills: sact extract -------------------------------------------------------------------


def write_kill_videos(folder: Path, *, good: int = 8) -> Path:
    """``good`` short videos (h264 mp4 and vp9 webm, each its own id) and two broken files, so
    the store holds failed rows as well."""
    from sact.testing.videos import write_corrupt_files, write_video_folder

    sources = write_video_folder(folder.with_name(folder.name + "-sources"))
    clips = [sources / "juggling/j1.mp4", sources / "juggling/j2.webm"]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(good):
        clip = clips[index % len(clips)]
        shutil.copy(clip, folder / f"v{index:02d}{clip.suffix}")
    broken = write_corrupt_files(folder.with_name(folder.name + "-broken"))
    for kind in ("truncated", "not_a_video"):
        shutil.copy(broken[kind], folder / broken[kind].name)
    return folder


FEATURE_SET = "kill"
SHARD_SIZE = 2
KILL_EXTRACTION = {"shard_size": SHARD_SIZE, "batch_size": 2, "name": FEATURE_SET}


def extract_arguments(videos: Path, out: Path | str, **options: object) -> list[str]:
    """`sact extract` of the suite: the tests' tiny config, shards of 2 videos."""
    chosen = {**KILL_EXTRACTION, **options}
    return ["extract", "--videos", str(videos), "--out", str(out), *tiny_cli_options(**chosen)]


def kill_extraction(
    workdir: Path, *, kills: int, seed: int, good_videos: int = 8
) -> list[Injection]:
    """`sact extract` SIGKILLed before ``kills`` seeded file-system operations of a run (during a
    claim, a features shard write and a done-marker write among them), each in a fresh store, then
    resumed by the same command: the store must equal a clean run's in every array."""
    videos = write_kill_videos(workdir / "videos", good=good_videos)
    reference = workdir / "reference.zarr"
    trace = workdir / "reference-ops.txt"
    clean = run_killed(extract_arguments(videos, reference), under=reference, at=None, trace=trace)
    if clean.returncode not in (0, 1):  # 1: the broken files failed, as they should
        raise RuntimeError(f"the clean run failed: {failure_message(clean)}")
    operations = read_trace(trace)
    name = FEATURE_SET
    moments = choose_moments(
        operations,
        kills,
        np.random.default_rng(seed),
        must={
            "during a claim": path_starts(f"{CLAIMS_PREFIX}/{name}/shard-"),
            "during a features shard write": path_starts(f"{name}/features/c/", "os.rename"),
            "between a shard's features and its done markers": path_starts(f"{name}/done/c/"),
            "while creating the feature set": path_starts(f"{name}/zarr.json"),
        },
    )
    injections = []
    for number, (at, label) in enumerate(moments):
        store = workdir / f"killed-{number:02d}.zarr"
        killed_trace = workdir / f"killed-{number:02d}-ops.txt"
        arguments = extract_arguments(videos, store)
        killed = run_killed(arguments, under=store, at=at, trace=killed_trace)
        moment = describe_kill(killed_trace, label, len(operations))
        if killed.returncode != -9:
            injections.append(
                Injection(
                    "sact extract SIGKILLed",
                    moment,
                    f"not killed (exit {killed.returncode})",
                    False,
                )
            )
            continue
        resumed = run_sact(arguments)
        differences = store_differences(str(store), str(reference), name)
        held = claims_still_held(str(store), name)
        if resumed.returncode not in (0, 1):
            outcome = f"resume failed: {failure_message(resumed)}"
        elif differences or held:
            outcome = f"resumed, but differs in {differences}, claims held: {held}"
        else:
            outcome = RESUMED_EQUAL
        injections.append(
            Injection(
                "sact extract SIGKILLed",
                moment,
                outcome,
                outcome == RESUMED_EQUAL,
                videos_lost(str(store), str(reference), name),
            )
        )
    return injections


def summary_json(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(completed.stdout) if completed.stdout.strip() else {}


# ---- kills: sact train ---------------------------------------------------------------------


def write_training_store(workdir: Path) -> tuple[str, str]:
    """A synthetic store of 12 classes (6 train, 3 val, 3 test) and its split lists."""
    from sact.testing.stores import write_split_lists, write_synthetic_store

    parts = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 12)}
    split = str(write_split_lists(workdir / "split", 12, 6, parts))
    store = write_synthetic_store(
        workdir / "feats.zarr", classes=12, videos_per_class=6, frames=4, shard_size=8, split=split
    )
    return store, split


def train_arguments(store: str, split: str, run: Path, **options: object) -> list[str]:
    """`sact train` of the suite: a small SA-CT, 12 steps, a checkpoint every 4."""
    chosen: dict[str, object] = {
        "way": 3, "shot": 1, "query": 1, "d_k": 8, "iterations": 12, "lr": 3e-3, "warmup": 2,
        "tasks_per_batch": 1, "val_every": 4, "val_episodes": 6, "device": "cpu", **options,
    }  # fmt: skip
    arguments = ["train", "--feats", store, "--split", split, "--out", str(run)]
    for key, value in chosen.items():
        arguments += ["--" + key.replace("_", "-"), str(value)]
    return arguments


def run_differences(run: Path, reference: Path) -> list[str]:
    """What differs between two runs: checkpoint files (weights bit for bit, resume state) and
    the metrics' records."""
    from sact.fewshot.training import METRICS_FILE, read_metrics

    differences = []
    for checkpoint in ("last", "best", "untrained"):
        for name in ("model.safetensors", "checkpoint.json", "resume.json"):
            got, expected = (
                run / "checkpoints" / checkpoint / name,
                reference / "checkpoints" / checkpoint / name,
            )
            if expected.exists() and (
                not got.exists() or got.read_bytes() != expected.read_bytes()
            ):
                differences.append(f"{checkpoint}/{name}")
    if read_metrics(run / METRICS_FILE) != read_metrics(reference / METRICS_FILE):
        differences.append(METRICS_FILE)
    return differences


def steps_lost(run: Path, reference: Path) -> int:
    """Steps of the clean run that the run's metrics lack or record differently."""
    from sact.fewshot.training import METRICS_FILE, read_metrics

    got = {json.dumps(record, sort_keys=True) for record in read_metrics(run / METRICS_FILE)}
    expected = [json.dumps(r, sort_keys=True) for r in read_metrics(reference / METRICS_FILE)]
    return sum(record not in got for record in expected)


def kill_training(workdir: Path, *, kills: int, seed: int) -> list[Injection]:
    """`sact train` SIGKILLed before ``kills`` seeded file-system operations of its run folder
    (mid-checkpoint, between a checkpoint's renames and mid-metrics among them), each in a fresh
    run, then continued with `sact train --out RUN --resume`: the final weights, resume state and
    metrics must equal a clean run's bit for bit."""
    from sact.fewshot.training import CONFIG_FILE

    store, split = write_training_store(workdir)
    reference = workdir / "reference-run"
    trace = workdir / "reference-ops.txt"
    clean = run_killed(
        train_arguments(store, split, reference), under=reference, at=None, trace=trace
    )
    if clean.returncode != 0:
        raise RuntimeError(f"the clean run failed: {failure_message(clean)}")
    operations = read_trace(trace)
    # --resume continues a run that has its config.json; killed before it, there is no run yet.
    started = next(op.index for op in operations if op.path == CONFIG_FILE)
    moments = choose_moments(
        [op for op in operations if op.index > started],
        kills,
        np.random.default_rng(seed),
        must={
            "mid-checkpoint": path_starts("checkpoints/last.partial/"),
            "between a checkpoint's renames": lambda op: (
                op.path == "checkpoints/last" and op.kind == "os.rename"
            ),
            "while saving the best checkpoint": path_starts("checkpoints/best.partial/"),
            "while appending metrics": path_starts("metrics.jsonl"),
        },
    )
    injections = []
    for number, (at, label) in enumerate(moments):
        run = workdir / f"killed-{number:02d}"
        killed_trace = workdir / f"killed-{number:02d}-ops.txt"
        killed = run_killed(
            train_arguments(store, split, run), under=run, at=at, trace=killed_trace
        )
        moment = describe_kill(killed_trace, label, len(operations))
        if killed.returncode != -9:
            injections.append(
                Injection(
                    "sact train SIGKILLed", moment, f"not killed (exit {killed.returncode})", False
                )
            )
            continue
        resumed = run_sact(["train", "--out", str(run), "--resume", "--device", "cpu"])
        differences = run_differences(run, reference)
        if resumed.returncode != 0:
            outcome = f"resume failed: {failure_message(resumed)}"
        elif differences:
            outcome = f"resumed, but differs in {differences}"
        else:
            outcome = RESUMED_EQUAL
        injections.append(
            Injection(
                "sact train SIGKILLed",
                moment,
                outcome,
                outcome == RESUMED_EQUAL,
                steps_lost(run, reference),
            )
        )
    return injections


def kill_training_twice(workdir: Path) -> Injection:
    """A run SIGKILLed between the two renames of a checkpoint (only ``last.previous`` is left),
    then its resumed run SIGKILLed again during its first checkpoint, just before the new
    checkpoint is renamed into place; then resumed once more. No kill may cost a saved step."""
    from sact.fewshot.checkpoints import checkpoint_folder, read_checkpoint

    store, split = write_training_store(workdir)
    reference = workdir / "reference-run"
    trace = workdir / "reference-ops.txt"
    run_killed(train_arguments(store, split, reference), under=reference, at=None, trace=trace)
    between = [
        op for op in read_trace(trace) if op.path == "checkpoints/last" and op.kind == "os.rename"
    ]
    run = workdir / "killed"
    first_trace = workdir / "killed-ops.txt"
    run_killed(
        train_arguments(store, split, run), under=run, at=between[2].index, trace=first_trace
    )
    saved_step = read_checkpoint(checkpoint_folder(run / "checkpoints/last")).step
    # Where the resumed run renames its first new checkpoint into place: trace it on a copy.
    rehearsal = workdir / "rehearsal"
    shutil.copytree(run, rehearsal)
    resume = ["train", "--out", str(run), "--resume", "--device", "cpu"]
    rehearsal_trace = workdir / "rehearsal-ops.txt"
    run_killed(
        ["train", "--out", str(rehearsal), "--resume", "--device", "cpu"],
        under=rehearsal,
        at=None,
        trace=rehearsal_trace,
    )
    renames = [
        op
        for op in read_trace(rehearsal_trace)
        if op.path == "checkpoints/last" and op.kind == "os.rename"
    ]
    second_trace = workdir / "killed-again-ops.txt"
    run_killed(resume, under=run, at=renames[0].index, trace=second_trace)
    first = describe_kill(first_trace, "between a checkpoint's renames", len(read_trace(trace)))
    second = describe_kill(second_trace, "in the resumed run", len(read_trace(rehearsal_trace)))
    moment = f"{first}; then {second}"
    last = checkpoint_folder(run / "checkpoints/last")
    kept_step = read_checkpoint(last).step if (last / "checkpoint.json").exists() else None
    resumed = run_sact(resume)
    differences = run_differences(run, reference)
    if kept_step is None or kept_step < saved_step:
        outcome = f"the checkpoint of step {saved_step} was lost by the second kill"
    elif resumed.returncode != 0:
        outcome = f"resume failed: {failure_message(resumed)}"
    elif differences:
        outcome = f"resumed, but differs in {differences}"
    else:
        outcome = RESUMED_EQUAL
    lost = saved_step - (kept_step or 0)
    return Injection("sact train SIGKILLed twice", moment, outcome, outcome == RESUMED_EQUAL, lost)


def _race_with_a_kill(
    arguments: list[str], store: Path, *, at: int, trace: Path
) -> tuple[int, int]:
    """Two runs of ``arguments`` at once, the first SIGKILLed before its operation ``at``; their
    exit statuses."""
    killer = [sys.executable, "-m", "tests.faults.kills", "--under", str(store)]
    killer += ["--trace", str(trace), "--at", str(at), "--"]
    runs = [
        subprocess.Popen(
            command,
            env=one_thread_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command in ([*killer, *arguments], [sys.executable, "-m", "sact.cli", *arguments])
    ]
    killed, other = (run.wait(timeout=COMMAND_TIMEOUT_S) for run in runs)
    return killed, other


def kill_one_writer(
    workdir: Path, *, kills: int, seed: int, good_videos: int = 14
) -> list[Injection]:
    """Two `sact extract` runs on one store at once, one of them SIGKILLed before a seeded
    operation of its own; the other finishes, then the same command runs once more: the store must
    equal a clean run's, no video lost, none twice."""
    videos = write_kill_videos(workdir / "videos", good=good_videos)
    reference = workdir / "reference.zarr"
    trace = workdir / "reference-ops.txt"
    one_video_shards = {"shard_size": 1}
    clean = run_killed(
        extract_arguments(videos, reference, **one_video_shards),
        under=reference,
        at=None,
        trace=trace,
    )
    if clean.returncode not in (0, 1):
        raise RuntimeError(f"the clean run failed: {failure_message(clean)}")
    total = len(read_trace(trace))
    rng = np.random.default_rng(seed)
    # Sharing the work, the killed run does about half of what a run alone does.
    moments = sorted(
        int(at) for at in rng.choice(np.arange(1, total // 2), size=kills, replace=False)
    )
    name = FEATURE_SET
    injections = []
    for number, at in enumerate(moments):
        store = workdir / f"shared-{number:02d}.zarr"
        arguments = extract_arguments(videos, store, **one_video_shards)
        killed_trace = workdir / f"shared-{number:02d}-ops.txt"
        codes = _race_with_a_kill(arguments, store, at=at, trace=killed_trace)
        while codes[0] != -9 and at > 1:  # it finished first, its share smaller than `at` ops
            at //= 2
            shutil.rmtree(store)
            codes = _race_with_a_kill(arguments, store, at=at, trace=killed_trace)
        moment = describe_kill(killed_trace, "one writer of two", total)
        if codes[0] != -9 or codes[1] not in (0, 1):
            outcome = (
                f"exit statuses {codes} (expected -9 for the killed run, 0 or 1 for the other)"
            )
            injections.append(
                Injection("one of two concurrent writers SIGKILLed", moment, outcome, False)
            )
            continue
        resumed = run_sact(arguments)
        differences = store_differences(str(store), str(reference), name)
        if resumed.returncode not in (0, 1):
            outcome = f"resume failed: {failure_message(resumed)}"
        elif differences:
            outcome = f"resumed, but differs in {differences}"
        else:
            outcome = RESUMED_EQUAL
        injections.append(
            Injection(
                "one of two concurrent writers SIGKILLed",
                moment,
                outcome,
                outcome == RESUMED_EQUAL,
                videos_lost(str(store), str(reference), name),
            )
        )
    return injections
