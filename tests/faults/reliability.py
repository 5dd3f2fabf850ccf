"""The whole fault-injection suite in one command, and the page it writes:

    python -m tests.faults.reliability --repeat 2 --out docs/RELIABILITY.md

runs every scenario ``--repeat`` times with seeds 0, 1, ... (each in a fresh folder), then writes
a table of every fault: how many times it was injected, what sact did (resumed equal, refused with
its message, recorded with its reason), whether that is what sact owes it, and what was lost. The
details of every injection follow the table, and ``--json`` keeps them all. The tests run the same
scenarios once, small (tests/test_kills.py, test_full_disk.py, test_shared_store.py,
test_bad_videos.py, test_hostile_inputs.py, test_corruption.py); this command is the long
repetition, on demand.

The scenarios (tests.faults.scenarios, full_disk, shared_store, corruption, bad_videos, hostile):

    kills            sact extract SIGKILLed at 10 seeded moments, sact train at 5, a checkpoint
                     killed twice, one of two concurrent writers killed; each then resumed
    full disk        ENOSPC on a small tmpfs during extraction and training (where the machine
                     lets the suite mount one), then resumed
    flaky S3         the local S3 server behind FlakyS3Proxy, flaky, then down mid-run
    load             three writers and two readers, on local disk and on the S3 server
    corruption       a byte flipped in feature chunks: read refused, verify, redo
    bad videos       the zoo, extracted twice
    hostile inputs   each refused in one line
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tests.faults.scenarios import (
    Injection,
    kill_extraction,
    kill_one_writer,
    kill_training,
    kill_training_twice,
)

Scenario = Callable[[Path, int], list[Injection]]

FULL_DISK_ROOMS = (0.1, 0.4, 0.7)  # fractions of what a clean run writes that still fit


def _full_disk(kind: str) -> Scenario:
    def run(workdir: Path, seed: int) -> list[Injection]:
        from tests.faults.full_disk import can_mount_tmpfs, in_a_namespace

        if not can_mount_tmpfs(workdir):
            return []
        return in_a_namespace(kind, workdir, FULL_DISK_ROOMS)

    return run


def _flaky_s3(workdir: Path, seed: int) -> list[Injection]:
    from tests.faults.shared_store import flaky_object_storage

    return [flaky_object_storage(workdir, seed=seed)]


def _outage(workdir: Path, seed: int) -> list[Injection]:
    from tests.faults.shared_store import object_storage_outage

    return [object_storage_outage(workdir, seed=seed)]


def _load(on_s3: bool) -> Scenario:
    def run(workdir: Path, seed: int) -> list[Injection]:
        from tests.faults.shared_store import writers_and_readers

        return [writers_and_readers(workdir, seed=seed, on_s3=on_s3)]

    return run


def _bad_videos(workdir: Path, seed: int) -> list[Injection]:
    from tests.faults.bad_videos import zoo_extraction

    return zoo_extraction(workdir)


def _corruption(workdir: Path, seed: int) -> list[Injection]:
    from tests.faults.corruption import silent_corruption

    return silent_corruption(workdir, seed=seed)


def _hostile(workdir: Path, seed: int) -> list[Injection]:
    from tests.faults.hostile import hostile_inputs

    return hostile_inputs(workdir)


SCENARIOS: dict[str, Scenario] = {
    "kill extraction": lambda workdir, seed: kill_extraction(workdir, kills=10, seed=seed),
    "kill training": lambda workdir, seed: kill_training(workdir, kills=5, seed=seed),
    "kill training twice": lambda workdir, seed: [kill_training_twice(workdir)],
    "kill one of two writers": lambda workdir, seed: kill_one_writer(workdir, kills=2, seed=seed),
    "full disk, extraction": _full_disk("extract"),
    "full disk, training": _full_disk("train"),
    "flaky object storage": _flaky_s3,
    "object storage outage": _outage,
    "load on local disk": _load(on_s3=False),
    "load on the S3 server": _load(on_s3=True),
    "silent corruption": _corruption,
    "bad videos": _bad_videos,
    "hostile inputs": _hostile,
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _outcome_summary(injections: list[Injection]) -> str:
    """The distinct outcomes of one fault with their counts, the most frequent first."""
    counted = Counter(injection.outcome for injection in injections)
    return "; ".join(
        f"{outcome} (×{count})" if count > 1 else outcome
        for outcome, count in counted.most_common()
    )


def report(
    injections: list[Injection],
    *,
    command: str,
    repeat: int,
    seconds: float,
    skipped: list[str],
) -> str:
    """docs/RELIABILITY.md: the table of faults, then every injection."""
    by_fault: dict[str, list[Injection]] = defaultdict(list)
    for injection in injections:
        by_fault[injection.fault].append(injection)
    owed = sum(injection.expected for injection in injections)
    lost = sum(injection.lost for injection in injections)
    lines = [
        "# Reliability: the fault-injection suite",
        "",
        "What sact does when things go wrong, tried on purpose, repeatedly, with the result",
        "written down. Written by the suite itself (`tests.faults.reliability`); run it again with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, {platform.machine()} "
        f"({platform.python_implementation()} {platform.python_version()}), "
        f"{len(injections)} faults injected in {seconds / 60:.0f} min, "
        f"{repeat} repetition(s) with seeds 0..{repeat - 1}: "
        f"**{owed} of {len(injections)} as owed, {lost} videos or steps lost or duplicated**.",
        "",
        "Outcomes: *resumed equal* is bitwise a clean run's store (every array) or run (weights,",
        "resume state, metrics); *refused* is one `error:` line and exit status 2; *recorded* is a",
        "video's row with its own reason. *As owed* counts the injections whose outcome is the one",
        "sact owes that fault; *lost* counts videos or training steps lost or duplicated. WORK is",
        "each scenario's scratch folder.",
        "",
        "| fault | injected | as owed | lost | outcome |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for fault, group in by_fault.items():
        lines.append(
            f"| {_cell(fault)} | {len(group)} | {sum(i.expected for i in group)} "
            f"| {sum(i.lost for i in group)} | {_cell(_outcome_summary(group))} |"
        )
    if skipped:
        lines += ["", "Not run here: " + "; ".join(skipped) + "."]
    lines += ["", "## Every injection", ""]
    for fault, group in by_fault.items():
        lines += [f"**{fault}**", ""]
        for injection in group:
            mark = "" if injection.expected else " **NOT AS OWED**"
            lost_text = f" (lost {injection.lost})" if injection.lost else ""
            lines.append(f"- {injection.moment}: {injection.outcome}{lost_text}{mark}")
        lines.append("")
    return "\n".join(lines)


def _without(folder: Path, injection: Injection) -> Injection:
    """``injection`` with the scenario's scratch folder written as WORK: the same outcome reads
    the same in every repetition."""
    return replace(
        injection,
        moment=injection.moment.replace(str(folder), "WORK"),
        outcome=injection.outcome.replace(str(folder), "WORK"),
    )


def run_suite(
    names: Sequence[str], *, repeat: int, workdir: Path, say: Callable[[str], None]
) -> tuple[list[Injection], list[str]]:
    """Every scenario of ``names`` ``repeat`` times; the injections, and what could not run."""
    injections: list[Injection] = []
    skipped: list[str] = []
    for name in names:
        for seed in range(repeat):
            folder = workdir / f"{name.replace(' ', '-').replace(',', '')}-{seed}"
            folder.mkdir(parents=True)
            started = time.perf_counter()
            found = [_without(folder, injection) for injection in SCENARIOS[name](folder, seed)]
            shutil.rmtree(folder, ignore_errors=True)
            if not found:
                skipped.append(f"{name} (this machine does not allow it)")
                break
            owed = sum(injection.expected for injection in found)
            say(
                f"{name}, seed {seed}: {owed} of {len(found)} as owed "
                f"({time.perf_counter() - started:.0f} s)"
            )
            injections += found
    return injections, skipped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.reliability",
        description="Run the fault-injection suite; print its page, or write it with --out.",
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions, seeds 0..N-1")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SCENARIOS), help="these scenarios (default: all)"
    )
    parser.add_argument("--out", type=Path, help="write the page here (docs/RELIABILITY.md)")
    parser.add_argument("--json", type=Path, help="also write every injection here")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    options = parser.parse_args(argv)
    names = options.only or list(SCENARIOS)
    command = "python -m tests.faults.reliability --repeat " + str(options.repeat)
    if options.only:
        command += " --only " + " ".join(repr(name) for name in names)
    if options.out is not None:
        command += f" --out {options.out}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        injections, skipped = run_suite(
            names,
            repeat=options.repeat,
            workdir=Path(scratch),
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    seconds = time.perf_counter() - started
    page = report(
        injections, command=command, repeat=options.repeat, seconds=seconds, skipped=skipped
    )
    if options.out is None:
        print(page)
    else:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(page + "\n")
    if options.json:
        options.json.write_text(json.dumps([i.to_json() for i in injections], indent=1) + "\n")
    owed = sum(injection.expected for injection in injections)
    written = "" if options.out is None else f"; written to {options.out}"
    print(f"{owed} of {len(injections)} faults as owed{written}", file=sys.stderr)
    if owed != len(injections):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
