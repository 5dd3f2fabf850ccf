"""Start-up time of the command line: how long `sact` takes to answer, old code against new.

Each command runs as a fresh process (`python -m sact.cli ...`), once with this checkout and once
with another one given by ``--before`` (e.g. a git worktree of an older commit), alternating,
``--repeat`` times each; the table shows the median wall time of each and their ratio. The
commands are those a user waits on before any work starts: the help, a store's inventory, and
four mistakes (a bad option value, a videos folder or a store that does not exist, an evaluation
with no trained run), which should all be refused in well under a second.

    git worktree add /tmp/sact-before <commit>
    .venv/bin/python bench/startup.py --before /tmp/sact-before [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parents[1]


def commands(store: Path, empty: Path) -> dict[str, list[str]]:
    return {
        "sact --help": ["--help"],
        "sact info STORE": ["info", str(store)],
        "sact train --lr abc (bad option value)": ["train", "--feats", str(store), "--lr", "abc"],
        "sact extract --videos /missing ...": [
            "extract",
            "--videos",
            str(empty / "missing"),
            "--out",
            str(empty / "f.zarr"),
        ],
        "sact train --feats missing.zarr": ["train", "--feats", str(empty / "missing.zarr")],
        "sact evaluate (no trained run)": ["evaluate"],
    }


def importable_as_sact(checkout: Path, links: Path) -> dict[str, str]:
    """The environment of a python that imports ``sact`` from ``checkout``."""
    links.mkdir(parents=True)
    (links / "sact").symlink_to(checkout.resolve(), target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(links), "COLUMNS": "100"}


def time_once(arguments: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sact.cli", *arguments],
        env=env, cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    lines = (done.stderr or done.stdout).strip().splitlines()
    return seconds, done.returncode, lines[0] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="Checkout of the old code.")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env_of = {
            "before": importable_as_sact(args.before, tmp / "before"),
            "after": importable_as_sact(HERE, tmp / "after"),
        }
        store = tmp / "feats.zarr"
        subprocess.run(
            [sys.executable, "-c", "import sys; from sact.testing.stores import "
             "write_synthetic_store as w; w(sys.argv[1])", str(store)],
            env=env_of["after"], check=True,
        )  # fmt: skip
        (tmp / "work").mkdir()
        results = {}
        for label, arguments in commands(store, tmp).items():
            times: dict[str, list[float]] = {"before": [], "after": []}
            answers = {}
            for _ in range(args.repeat):
                for version, env in env_of.items():
                    seconds, code, first_line = time_once(arguments, env, tmp / "work")
                    times[version].append(seconds)
                    answers[version] = (code, first_line)
            results[label] = {
                version: {
                    "median_s": statistics.median(times[version]),
                    "exit": answers[version][0],
                    "first_line": answers[version][1],
                }
                for version in times
            }

    table = Table(title=f"sact start-up, median of {args.repeat} runs (s), old vs this checkout")
    for column in ("command", "before", "after", "after ÷ before", "exit before/after"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for label, result in results.items():
        before, after = result["before"], result["after"]
        table.add_row(
            label,
            f"{before['median_s']:.2f}",
            f"{after['median_s']:.2f}",
            f"{after['median_s'] / before['median_s']:.2f}",
            f"{before['exit']} / {after['exit']}",
        )
    console = Console(width=200)
    console.print(table)
    console.print(
        f"load average (1 min) {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after",
        highlight=False,
    )
    for label, result in results.items():
        for version in ("before", "after"):
            said = result[version]["first_line"].strip()
            console.print(f"{label}, {version}: {said!r}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
