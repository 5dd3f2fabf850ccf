"""The command that runs the whole fault-injection suite and writes docs/RELIABILITY.md
(tests.faults.reliability), on the scenarios that take seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.reliability import main, report
from tests.faults.scenarios import Injection


def test_the_page_counts_each_fault_and_shows_what_was_not_as_owed() -> None:
    injections = [
        Injection("sact extract SIGKILLed", "during a claim", "resumed equal", True),
        Injection("sact extract SIGKILLed", "anywhere", "resumed equal", True),
        Injection("sact extract SIGKILLed", "anywhere", "resume failed: error: x", False, 2),
    ]
    page = report(injections, command="python -m x", repeat=1, seconds=60, skipped=["full disk"])
    assert "| sact extract SIGKILLed | 3 | 2 | 2 | resumed equal (×2); resume failed" in page
    assert "**2 of 3 as owed, 2 videos or steps lost or duplicated**" in page
    assert "- anywhere: resume failed: error: x (lost 2) **NOT AS OWED**" in page
    assert "Not run here: full disk." in page


@pytest.mark.slow
def test_one_command_runs_scenarios_and_writes_the_page(tmp_path: Path) -> None:
    out, details = tmp_path / "RELIABILITY.md", tmp_path / "injections.json"
    main(["--only", "bad videos", "--out", str(out), "--json", str(details)])
    injections = json.loads(details.read_text())
    assert len(injections) >= 15 and all(injection["expected"] for injection in injections)
    page = out.read_text()
    assert "python -m tests.faults.reliability --repeat 1 --only 'bad videos'" in page
    assert (
        "| bad video: dangling symbolic link | 1 | 1 | 0 | recorded: dangling symbolic link" in page
    )
