"""The new user's trial of issue 24, repeated on the current code: an HMDB-style dataset, HyRSM
lists, a DINOv2-style ViT, every command a new user reaches for, and the usual mistakes.

    python bench/new_user_trial.py                      # in a temporary folder
    python bench/new_user_trial.py --out trial --json trial.json

The dataset: 8 classes of .avi files whose class folders and file names hold spaces, '#', '!',
parentheses and non-ASCII letters, listed as HyRSM does (``train0//videos/<class>/<file>.avi``;
4 train, 2 val, 2 test classes). The backbone: timm's ``vit_small_patch14_dinov2`` built with
seeded random weights (no download) at 56 px, a 4×4 patch grid. Every step runs `sact` as a user
would (a subprocess, its own working folder) and is timed; the machine's load is printed beside
each time. A step passes when the command did what a demanding user expects, checked on its exit
status and its words; the table and the JSON say what was checked and what was seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sact.common.errors import SactError
from sact.demo.synthetic import encode_video
from sact.store.backends import open_feature_set
from sact.testing.videos import synthetic_frames

# class index (as HyRSM numbers them per part) -> class folder
CLASSES = {
    "train0": "brush hair",
    "train1": "kick #1 (ball)",
    "train2": "climb!",
    "train3": "fußball",
    "val0": "ride (bike)",
    "val1": "smile :)",
    "test0": "sauté",
    "test1": "pull-up #2!",
}
VIDEOS_PER_CLASS = 6
VIDEO_FRAMES = 16
VIDEO_NOISE = 12.0  # grey levels of per-video noise over the class's frames
BACKBONE = "vit_small_patch14_dinov2"  # DINOv2's ViT-S/14, random weights
SIZE = 56  # pixels: a 4×4 patch grid of 14-pixel patches
EPISODE = ["--way", "2", "--shot", "1", "--query", "2"]
# a budget a 2-core machine shared by several users gets through in minutes
SHORT_TRAINING = [
    *("--iterations", "12", "--val-every", "6", "--val-episodes", "10"),
    *("--warmup", "2", "--tasks-per-batch", "1"),
]
INTERRUPT_AFTER_LINES = 8  # metrics.jsonl lines: the step-0 validation and 7 steps
STEP_TIMEOUT = 900


@dataclass
class Step:
    name: str
    checked: str  # what a pass means
    passed: bool
    seen: str  # what happened, in a line
    seconds: float
    load: float  # the 1-minute load average when the step ended


@dataclass
class Trial:
    folder: Path
    console: Console

    @property
    def dataset(self) -> Path:
        return self.folder / "hmdb51"

    @property
    def lists(self) -> Path:
        return self.folder / "splits"

    @property
    def store(self) -> Path:
        return self.folder / "feats.zarr"

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    def sact(self, *arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sact.cli", *arguments],
            cwd=cwd or self.folder,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            env=environment(),
        )

    def start(self, *arguments: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "sact.cli", *arguments],
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )

    def extract_arguments(self) -> list[str]:
        return [
            "extract",
            "--videos",
            str(self.dataset),
            "--split",
            "splits",  # relative, as a user types it
            "--out",
            str(self.store),
            "--backbone",
            BACKBONE,
            "--random-init",
            "--size",
            str(SIZE),
            "--frames",
            "8",
            "--shard-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
        ]

    def train_arguments(self, out: Path, *more: str) -> list[str]:
        training = [*EPISODE, *SHORT_TRAINING, "--out", str(out), "--device", "cpu"]
        return ["train", "--feats", str(self.store), *training, *more]


def environment() -> dict[str, str]:
    """No network (the ViT has random weights) and the terminal width a user's window has."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}


def said(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def one_line_error(done: subprocess.CompletedProcess[str]) -> str | None:
    """The refusal's line when the command refused in exactly one line, else None."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if done.returncode == 0 or len(errors) != 1 or "Traceback" in said(done):
        return None
    return errors[0]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# ---- the steps ----------------------------------------------------------------------------------


def generate(trial: Trial) -> tuple[bool, str]:
    """Class c's videos share its colours and motion (synthetic_frames of seed c), each with
    noise of its own: a class a model can tell apart, in files a codec had to compress."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(0)
    for number, (index, folder) in enumerate(CLASSES.items()):
        frames = synthetic_frames(VIDEO_FRAMES, seed=number).astype(np.float32)
        for video in range(VIDEOS_PER_CLASS):
            name = f"{folder} clip {video} (take #{video})!.avi"
            noisy = frames + VIDEO_NOISE * rng.standard_normal(frames.shape, dtype=np.float32)
            path = trial.dataset / "videos" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_video(path, np.clip(noisy, 0, 255).astype(np.uint8))
            parts[index.rstrip("0123456789")].append(f"{index}//videos/{folder}/{name}")
    trial.lists.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        (trial.lists / f"{part}_few_shot.txt").write_text("\n".join(lines) + "\n", "utf-8")
    count = sum(len(lines) for lines in parts.values())
    return count == len(CLASSES) * VIDEOS_PER_CLASS, f"{count} videos, {len(CLASSES)} classes"


def misspelled_list(trial: Trial) -> tuple[bool, str]:
    typo = trial.folder / "splits-typo"
    shutil.copytree(trial.lists, typo)
    (typo / "train_few_shot.txt").rename(typo / "train_fewshot.txt")
    arguments = trial.extract_arguments()
    arguments[arguments.index("splits")] = str(typo)
    arguments[arguments.index(str(trial.store))] = str(trial.folder / "typo.zarr")
    started = time.perf_counter()
    done = trial.sact(*arguments)
    seconds = time.perf_counter() - started
    line = one_line_error(done)
    ok = (
        line is not None
        and "expected train_few_shot.txt" in line
        and "train_fewshot.txt is close" in line
        and not (trial.folder / "typo.zarr").exists()
    )
    return ok, f"{seconds:.1f} s: " + (line or last_line(said(done)))


def done_videos(store: Path) -> int:
    """Videos done in the store so far; 0 before its feature set exists."""
    try:
        return int(open_feature_set(str(store)).counts()["done"])
    except (SactError, OSError, ValueError, KeyError):  # not created yet, or being created
        return 0


def extract_killed(trial: Trial) -> tuple[bool, str]:
    """SIGKILL once some shards are written and others are not."""
    total = len(CLASSES) * VIDEOS_PER_CLASS
    running = trial.start(*trial.extract_arguments())
    while running.poll() is None:
        done = done_videos(trial.store)
        if 0 < done < total:
            running.kill()
            break
        time.sleep(0.2)
    running.communicate()
    done = done_videos(trial.store)
    return 0 < done < total, f"killed with {done} of {total} videos done"


def train_while_unfinished(trial: Trial) -> tuple[bool, str]:
    done = trial.sact(*trial.train_arguments(trial.runs / "too-early"))
    line = one_line_error(done)
    ok = line is not None and "the extraction is not finished" in line
    return ok, line or last_line(said(done))


def extract_resumed(trial: Trial) -> tuple[bool, str]:
    done = trial.sact(*trial.extract_arguments())
    counts = open_feature_set(str(trial.store)).counts()
    text = " ".join(said(done).split())
    ok = (
        done.returncode == 0
        and counts["done"] == counts["videos"] == len(CLASSES) * VIDEOS_PER_CLASS
        and "read train_few_shot.txt (24 lines)" in text
        and "0 lines name no file" in text
        and "videos/s after start-up" in text
    )
    return ok, f"exit {done.returncode}; {counts}; " + next(
        (line.strip() for line in said(done).splitlines() if "read train_few_shot" in line), ""
    )


def verify(trial: Trial) -> tuple[bool, str]:
    done = trial.sact("info", str(trial.store), "--verify")
    verdicts = said(done).count("verified every chunk")
    return done.returncode == 0 and verdicts == 1, f"exit {done.returncode}; verdict {verdicts}×"


def train_sact(trial: Trial) -> tuple[bool, str]:
    run = trial.runs / "sact"
    done = trial.sact(*trial.train_arguments(run, "--log", "tensorboard"))
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    return done.returncode == 0 and bool(
        events
    ), f"exit {done.returncode}; {len(events)} event " + ("file; " + last_line(done.stderr))


def train_trx(trial: Trial) -> tuple[bool, str]:
    done = trial.sact(*trial.train_arguments(trial.runs / "trx", "--model", "trx"))
    return done.returncode == 0, f"exit {done.returncode}; " + last_line(done.stderr)


def metric_lines(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def last_step(run: Path) -> int:
    """The last training step metrics.jsonl records."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max((record["step"] for record in records if "loss" in record), default=0)


def interrupted_and_resumed(trial: Trial) -> tuple[bool, str]:
    """Ctrl-C (SIGINT) mid-run, then --resume: one instruction, no step lost, to the end."""
    run = trial.runs / "sact-interrupted"
    iterations = 40
    arguments = trial.train_arguments(run, "--iterations", str(iterations), "--val-every", "20")
    running = trial.start(*arguments)
    while running.poll() is None and metric_lines(run) < INTERRUPT_AFTER_LINES:
        time.sleep(0.2)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate()
    stopped_at = last_step(run)
    instructions = (out + err).count("--resume") + (out + err).count("run the same command")
    resumed = trial.sact("train", "--out", str(run), "--resume", "--device", "cpu")
    words = said(resumed).split()
    at = words[words.index("step") + 1] if "resuming" in words and "step" in words else "?"
    ok = (
        running.returncode != 0
        and instructions == 1
        and at == str(stopped_at)
        and resumed.returncode == 0
        and last_step(run) == iterations
    )
    return ok, (
        f"interrupted at step {stopped_at}; {instructions} instruction(s); resumed at step {at}; "
        f"exit {resumed.returncode}, last step {last_step(run)}"
    )


def config_rerun(trial: Trial) -> tuple[bool, str]:
    """--config repeats a run: on the CPU the same metrics, bit for bit."""
    first, again = trial.runs / "sact", trial.runs / "sact-config"
    done = trial.sact("train", "--config", str(first / "config.json"), "--out", str(again))
    same = (
        done.returncode == 0
        and (first / "metrics.jsonl").read_text() == (again / "metrics.jsonl").read_text()
    )
    return same, f"exit {done.returncode}; metrics identical: {same}"


def evaluate_with_episode_file(trial: Trial) -> tuple[bool, str]:
    episodes = trial.folder / "test_episodes.json"
    common = [*EPISODE, "--episodes", "200", "--episodes-file", str(episodes), "--device", "cpu"]
    first = trial.sact("evaluate", "--run", str(trial.runs / "sact"), *common)
    second = trial.sact("evaluate", "--run", str(trial.runs / "trx"), *common)
    classes = sorted(
        {name for setting in json.loads(episodes.read_text())["settings"]
         for episode in setting["episodes"] for name in episode["classes"]}
    )  # fmt: skip
    ok = first.returncode == 0 and second.returncode == 0 and classes == ["pull-up #2!", "sauté"]
    return ok, f"exits {first.returncode}, {second.returncode}; episode classes {classes}"


def report(trial: Trial) -> tuple[bool, str]:
    done = trial.sact("report", str(trial.runs / "sact"), str(trial.runs / "trx"), "--json")
    rows = json.loads(done.stdout)["rows"] if done.returncode == 0 else []
    return done.returncode == 0 and len(rows) == 2, f"exit {done.returncode}; {len(rows)} rows"


def explain(trial: Trial) -> tuple[bool, str]:
    query, support = (f"sauté clip {n} (take #{n})!" for n in (0, 1))
    out = trial.folder / "attention.png"
    done = trial.sact(
        "explain", "--run", str(trial.runs / "sact"), "--query", query, "--support", support,
        "--out", str(out),
    )  # fmt: skip
    return (
        done.returncode == 0 and out.exists(),
        f"exit {done.returncode}; {out.name}: {out.exists()}",
    )


def moved_store(trial: Trial) -> tuple[bool, str]:
    """The store moved to another folder, its lists gone, and trained from a third folder."""
    elsewhere = trial.folder / "lab" / "shared.zarr"
    elsewhere.parent.mkdir()
    shutil.move(trial.store, elsewhere)
    trial.lists.rename(trial.folder / "splits-gone")
    working = trial.folder / "somewhere-else"
    working.mkdir()
    done = trial.sact(
        "train", "--feats", str(elsewhere), *EPISODE, *SHORT_TRAINING,
        "--out", str(trial.runs / "from-elsewhere"), "--device", "cpu", cwd=working,
    )  # fmt: skip
    scored = trial.sact(
        "evaluate", "--run", str(trial.runs / "sact"), "--feats", str(elsewhere), *EPISODE,
        "--episodes", "50", "--device", "cpu", cwd=working,
    )  # fmt: skip
    ok = done.returncode == 0 and scored.returncode == 0
    return ok, f"train exit {done.returncode}, evaluate exit {scored.returncode}; " + last_line(
        done.stderr if done.returncode else scored.stderr
    )


def usual_mistakes(trial: Trial) -> tuple[bool, str]:
    store = str(trial.folder / "lab" / "shared.zarr")
    mistakes = {
        "wrong --feats": ["train", "--feats", str(trial.folder / "nope.zarr"), *EPISODE],
        "--shot too large": ["train", "--feats", store, "--way", "2", "--shot", "9"],
        "unknown --split": ["train", "--feats", store, "--split", "hmdb_typo"],
        "no such run": ["evaluate", "--run", str(trial.runs / "nope")],
        "unknown video id": [
            "explain", "--run", str(trial.runs / "sact"), "--query", "nope", "--support", "nope",
        ],
    }  # fmt: skip
    refusals, failures = [], []
    for what, arguments in mistakes.items():
        started = time.perf_counter()
        done = trial.sact(*arguments, "--device", "cpu")
        seconds = time.perf_counter() - started
        if one_line_error(done) is None:
            failures.append(f"{what}: {last_line(said(done))}")
        refusals.append(f"{what} {seconds:.1f} s")
    return not failures, "; ".join(failures) or "one line each: " + ", ".join(refusals)


STEPS: list[tuple[str, str, Callable[[Trial], tuple[bool, str]]]] = [
    ("generate", "8 classes of awkwardly named .avi, HyRSM lists", generate),
    ("misspelled list", "extract refuses train_fewshot.txt in one line, no store", misspelled_list),
    ("extract, killed", "SIGKILL with some shards written", extract_killed),
    ("train too early", "'the extraction is not finished', one line", train_while_unfinished),
    ("extract, resumed", "finishes; files read and rate labelled", extract_resumed),
    ("info --verify", "exit 0, the verdict once", verify),
    ("train SA-CT", "trains, TensorBoard events written", train_sact),
    ("train TRX", "trains", train_trx),
    ("Ctrl-C, --resume", "one instruction; resumes to the end", interrupted_and_resumed),
    ("--config rerun", "same metrics bit for bit (CPU)", config_rerun),
    ("episode file", "both runs on one file; classes named by folder", evaluate_with_episode_file),
    ("report", "both runs in one table", report),
    ("explain", "attention PNG for awkward video ids", explain),
    ("moved store", "train and evaluate from another folder, lists gone", moved_store),
    ("usual mistakes", "each refused in one line (seconds beside)", usual_mistakes),
]  # fmt: skip


def run_trial(folder: Path, console: Console) -> list[Step]:
    trial = Trial(folder, console)
    steps = []
    for name, checked, step in STEPS:
        started = time.perf_counter()
        try:
            passed, seen = step(trial)
        except Exception as error:  # a step that breaks is a failed step; the trial goes on
            passed, seen = False, f"{type(error).__name__}: {error}"[:200]
        seconds = time.perf_counter() - started
        load = os.getloadavg()[0]
        steps.append(Step(name, checked, passed, seen, round(seconds, 1), round(load, 1)))
        mark = "[green]pass" if passed else "[red]FAIL"
        console.print(
            f"{mark}[/] {name} ({seconds:.1f} s, load {load:.1f}): {seen}", highlight=False
        )
    return steps


def steps_table(steps: list[Step]) -> Table:
    table = Table(title="new-user trial (issue 24)")
    for column in ("step", "checked", "result", "s", "load", "seen"):
        table.add_column(column, justify="right" if column in ("s", "load") else "left")
    for step in steps:
        result = "[green]pass" if step.passed else "[red]FAIL"
        table.add_row(
            step.name, step.checked, result, f"{step.seconds:.1f}", f"{step.load:.1f}", step.seen
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="Folder for the trial (must not exist); default: a temporary one."
    )
    parser.add_argument("--json", type=Path, help="Also write the steps as JSON here.")
    options = parser.parse_args()
    console = Console(stderr=True)
    if options.out is not None and options.out.exists():
        parser.exit(2, f"error: {options.out} exists; the trial starts from an empty folder\n")
    folder = options.out or Path(tempfile.mkdtemp(prefix="sact-trial-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = run_trial(folder.resolve(), console)
    Console().print(steps_table(steps))
    summary = {
        "folder": str(folder),
        "seconds": round(time.perf_counter() - started, 1),
        "passed": sum(step.passed for step in steps),
        "steps": [asdict(step) for step in steps],
    }
    if options.json is not None:
        options.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(f"{summary['passed']} of {len(steps)} steps passed in {summary['seconds']} s")
    if summary["passed"] < len(steps):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
