"""`sact sweep` on a synthetic store: the same table as the runs trained and evaluated one by one
with the command line, resumed bit for bit after kills, the same under torchrun with two ranks,
and a run folder trained otherwise refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sact.cli import app
from sact.fewshot.episodes import build_pool, resolve_split
from sact.fewshot.sweep_config import variant as registered_variant
from sact.fewshot.training import read_metrics
from sact.store.backends import open_feature_set
from sact.store.feature_set import FeatureSet

runner = CliRunner()
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "sweep.schema.json"

# 3 variants × 2 seeds, tiny: 3-way 2-shot training of 8 steps, 20 test episodes at 1 shot
SWEEP_FILE = """\
feats = "feats.zarr"
variants = ["sact", "sact-no-cpe", "protonet"]
seeds = 2
shots = [1]
steps = 8
episodes = 20
device = "cpu"

[train]
way = 3
shot = 2
query = 2
d_k = 16
lr = 0.003
warmup = 2
val_every = 4
val_episodes = 10

[evaluate]
way = 3
"""
# the same runs as `sact train` options
TRAIN_OPTIONS = [
    "--feats", "feats.zarr", "--way", "3", "--shot", "2", "--query", "2", "--d-k", "16",
    "--lr", "0.003", "--warmup", "2", "--iterations", "8", "--val-every", "4",
    "--val-episodes", "10", "--device", "cpu",
]  # fmt: skip
VARIANT_OPTIONS = {"sact": ["--model", "sact"], "sact-no-cpe": ["--model", "sact", "--no-cpe"],
                   "protonet": ["--model", "protonet"]}  # fmt: skip
RUNS = [f"{variant}-seed{seed}" for variant in VARIANT_OPTIONS for seed in (0, 1)]


def sweep_folder(tmp: Path, store: str | Path) -> Path:
    """A folder holding a copy of `store` and the sweep file (paths relative to it)."""
    shutil.copytree(store, tmp / "feats.zarr")
    (tmp / "sweep.toml").write_text(SWEEP_FILE)
    return tmp


def environment() -> dict[str, str]:
    """One thread, as in the sweep made in this process (float sums in the same order); no
    torchrun variables of an outer job. PYTHONPATH kept: this checkout's sact."""
    torchrun = (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    )
    return {k: v for k, v in os.environ.items() if k not in torchrun} | {"OMP_NUM_THREADS": "1"}


@contextmanager
def counting_reads(reads: Counter[int]) -> Iterator[None]:
    """Within the block, every video read from any feature set is counted in `reads` by its
    store index."""
    read = FeatureSet.read

    def counted(self: FeatureSet, indices: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        reads.update(np.asarray(indices).ravel().tolist())
        return read(self, indices, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureSet, "read", counted)
        yield


@pytest.fixture(scope="module")
def sweep_reads() -> Counter[int]:
    """How many times the sweep of `swept` read each video of its store, by store index."""
    return Counter()


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory, synthetic_store, sweep_reads: Counter[int]
) -> Path:
    """The sweep run once in this process, on one torch thread, into sweep/."""
    folder = sweep_folder(tmp_path_factory.mktemp("sweep"), synthetic_store.location)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        with counting_reads(sweep_reads):
            result = runner.invoke(
                app, ["sweep", "--file", "sweep.toml", "--out", "sweep", "--json"]
            )
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((folder / "sweep/report.json").read_text())
    return folder


def table_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's rows without where their runs live (each run's checkpoints in run order)."""
    return [
        {k: list(v.values()) if k == "checkpoints" else v for k, v in row.items() if k != "runs"}
        for row in report["rows"]
    ]


def saved_runs(folder: Path) -> dict[str, bytes]:
    """Every run's weights (both checkpoints) and per-episode results, by run and file."""
    found = {}
    for run in RUNS:
        for which in ("best", "last"):
            path = folder / run / "checkpoints" / which / "model.safetensors"
            found[f"{run}/{which}"] = path.read_bytes()
        (record,) = sorted((folder / run / "evaluations").glob("*.json"))
        settings = json.loads(record.read_text())["settings"]
        found[f"{run}/correct"] = json.dumps([s["correct"] for s in settings]).encode()
    return found


def test_a_sweep_gives_the_table_of_the_runs_made_one_by_one(
    swept: Path, sweep_reads: Counter[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(swept)
    # the sweep read each test video once for its 6 runs (each run one by one reads it again)
    feature_set = open_feature_set(str(swept / "feats.zarr"))
    test = build_pool(feature_set, resolve_split(feature_set, None), "test").store_indices
    assert [sweep_reads[index] for index in test.tolist()] == [1] * len(test)
    report = json.loads((swept / "sweep/report.json").read_text())
    assert report["variants"] == [registered_variant(name).label for name in VARIANT_OPTIONS]
    assert sorted(path.name for path in (swept / "sweep/runs").iterdir()) == sorted(RUNS)
    for run in RUNS:
        variant, seed = run.rsplit("-seed", 1)
        command = ["train", *TRAIN_OPTIONS, *VARIANT_OPTIONS[variant], "--seed", seed]
        trained = runner.invoke(app, [*command, "--out", f"cli/{run}"])
        assert trained.exit_code == 0, trained.output
        evaluated = runner.invoke(
            app,
            ["evaluate", "--run", f"cli/{run}", "--way", "3", "--shot", "1", "--episodes", "20",
             "--episodes-file", "cli/episodes.json", "--device", "cpu"],
        )  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
    reported = runner.invoke(app, ["report", *(f"cli/{run}" for run in RUNS), "--json"])
    assert reported.exit_code == 0, reported.output
    assert table_of(json.loads(reported.stdout)) == table_of(report["report"])
    assert saved_runs(swept / "cli") == saved_runs(swept / "sweep/runs")


def test_a_sweep_killed_twice_resumes_to_the_same_runs(swept: Path, tmp_path: Path) -> None:
    folder = sweep_folder(tmp_path, swept / "feats.zarr")
    command = [sys.executable, "-m", "sact.cli", "sweep", "--file", "sweep.toml", "--out", "s"]
    rng = np.random.default_rng(21)
    for _ in range(2):  # killed at a seeded moment after its first run folder appeared
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        process = subprocess.Popen(command, cwd=folder, env=environment(), **quiet)
        while not (folder / "s/runs").exists() and process.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.0))
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # killed before it finished
    finished = subprocess.run(
        command, cwd=folder, env=environment(), capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr
    assert saved_runs(folder / "s/runs") == saved_runs(swept / "sweep/runs")
    reported = json.loads((folder / "s/report.json").read_text())
    assert table_of(reported["report"]) == table_of(
        json.loads((swept / "sweep/report.json").read_text())["report"]
    )


def test_two_torchrun_ranks_give_the_table_of_one_process(swept: Path, tmp_path: Path) -> None:
    folder = sweep_folder(tmp_path, swept / "feats.zarr")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    finished = subprocess.run(
        [*torchrun, "-m", "sact.cli", "sweep", "--file", "sweep.toml", "--out", "s"],
        cwd=folder, env=environment(), capture_output=True, text=True,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert saved_runs(folder / "s/runs") == saved_runs(swept / "sweep/runs")
    reported = json.loads((folder / "s/report.json").read_text())
    assert table_of(reported["report"]) == table_of(
        json.loads((swept / "sweep/report.json").read_text())["report"]
    )
    # each run was claimed once, and both ranks trained some
    claims = folder / "s/.claims/.sact-claims/runs"
    holders = {json.loads(path.read_text())["holder"]["pid"] for path in claims.glob("*/*.json")}
    assert len(list(claims.glob("*/*.json"))) == len(RUNS) and len(holders) == 2


def test_a_sweep_side_by_side_scores_its_runs_as_one_by_one(
    swept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--side-by-side on`: each variant's two seeds train in one process, one stacked step for
    both (fewshot/side_by_side.py); within float32 rounding of the runs made one by one, which
    on this tiny task leaves every validation and every test episode's verdict as it was."""
    torch.set_num_threads(1)
    monkeypatch.chdir(swept)
    result = runner.invoke(
        app, ["sweep", "--file", "sweep.toml", "--out", "side", "--side-by-side", "on"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("2 runs train side by side") == len(VARIANT_OPTIONS)
    assert "its estimate on cpu (side by side)" in result.output  # warmed up as they train

    def verdicts(folder: Path) -> dict[str, Any]:
        return {
            run: (
                [r for r in read_metrics(folder / run / "metrics.jsonl") if "val_accuracy" in r],
                saved_runs(folder)[f"{run}/correct"],
            )
            for run in RUNS
        }

    assert verdicts(swept / "side/runs") == verdicts(swept / "sweep/runs")
    again = runner.invoke(
        app, ["sweep", "--file", "sweep.toml", "--out", "side", "--side-by-side", "on"]
    )
    assert again.exit_code == 0 and "side by side" not in again.output  # nothing left to do
    bad = runner.invoke(app, ["sweep", "--file", "sweep.toml", "--side-by-side", "maybe"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert "--side-by-side must be auto, on or off" in bad.output


def test_a_run_trained_otherwise_is_refused_in_one_line(
    swept: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(swept)
    before = saved_runs(swept / "sweep/runs")
    (swept / "other.toml").write_text(SWEEP_FILE.replace("lr = 0.003", "lr = 0.001"))
    refused = runner.invoke(app, ["sweep", "--file", "other.toml", "--out", "sweep"])
    assert refused.exit_code == 2
    assert refused.output.count("\n") == 1 and "--lr 0.003" in refused.output
    assert "sweep/runs/sact-seed0 holds a run trained with" in refused.output
    assert saved_runs(swept / "sweep/runs") == before  # nothing touched


def test_the_sweep_file_follows_the_documented_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(tomllib.loads(SWEEP_FILE), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"variants": ["sact"], "bogus": 1}, schema)


# a recipe at a tiny size: its published numbers and variants, the synthetic store and split
RECIPE_FILE = """\
recipe = "ssv2-otam"
feats = "feats.zarr"
split = "split"
variants = ["sact", "protonet"]
seeds = 1
steps = 2
episodes = 10
device = "cpu"

[train]
way = 3
shot = 2
query = 2
d_k = 8
warmup = 1
val_every = 2
val_episodes = 4
"""


def test_a_recipe_runs_at_a_tiny_size_with_its_published_numbers_beside(
    tmp_path: Path, synthetic_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    shutil.copytree(synthetic_store.location, tmp_path / "feats.zarr")
    shutil.copytree(synthetic_store.split, tmp_path / "split")
    (tmp_path / "tiny.toml").write_text(RECIPE_FILE)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "--file", "tiny.toml", "--out", "otam", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # the recipe's test protocol: 5-way, 1 and 5 shots; the file's budget and variants
    settings = report["report"]["settings"]
    assert [(s["way"], s["shot"], s["episodes"]) for s in settings] == [(5, 1, 10), (5, 5, 10)]
    assert report["variants"] == [registered_variant(name).label for name in ("sact", "protonet")]
    methods = {m["method"]: m for m in report["published"]["methods"]}
    assert list(methods) == ["TRX", "STRM", "HyRSM", "SA-CT"]
    assert methods["TRX"]["accuracy"] == {"1": 42.0, "5": 64.6}
    assert methods["STRM"]["accuracy"] == {"1": 43.1, "5": 68.1}
    markdown = (tmp_path / "otam/report.md").read_text()
    assert "| TRX | 42.0 | 64.6 | Perrett et al." in markdown
    assert "| SA-CT | " in markdown and "this sweep, 1 seed(s)" in markdown
    # the store is not what the recipe extracts: said, not refused
    assert "note: feature set synthetic has backbone" in result.output


def test_every_recipe_is_listed_and_reads_as_a_sweep(tmp_path: Path) -> None:
    from sact.data.split_lists import resolve_split_dir
    from sact.fewshot.sweep_config import SweepConfig, apply_layer, read_recipe, recipe_names

    names = recipe_names()
    assert names == ["hmdb51-arn", "kinetics-cmn", "ssv2-cmn", "ssv2-otam", "ucf101-arn"]
    schema = json.loads(SCHEMA.read_text())
    for name in names:
        recipe = read_recipe(name)
        resolve_split_dir(recipe.split)
        jsonschema.validate(recipe.sweep, schema)
        config = apply_layer(SweepConfig(), recipe.sweep, name)
        assert config.shots == (1, 5) and config.evaluation.way == 5
        assert {p.method for p in recipe.published} == {"TRX", "STRM", "HyRSM", "SA-CT"}
        # a published number comes with where it was read, never from memory
        for entry in recipe.published:
            assert set(entry.shots) == {1, 5}
            assert not any(entry.shots.values()) or "https://" in entry.source, entry
    listed = runner.invoke(app, ["sweep", "--list"], terminal_width=400)
    assert listed.exit_code == 0, listed.output
    assert (
        all(name in listed.output for name in names)
        and "TRX: 1-shot 42.0, 5-shot 64.6" in listed.output
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[train]\nlr = "x"\n', "[train]: lr = 'x' is not a float"),
        ('seeds = "3"\n', "seeds = '3' is not a int"),
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[evaluate]\nepisodes = 5\n", "[evaluate]: unknown key 'episodes'"),
    ],
)
def test_a_bad_sweep_file_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    refused = runner.invoke(app, ["sweep", "--file", str(tmp_path / "bad.toml")])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    assert message in refused.output
