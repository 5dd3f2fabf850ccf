"""bench/gpu.py, the prepared GPU benchmark of issues 11 and 20, runs here at a tiny size on the
CPU, so a change elsewhere cannot break it unseen before a GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
CPU_POLICIES = ("float32", "bf16-keys", "bf16")  # the policies that differ on a CPU (no TF32)


def run_bench(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCH), "--scale", "tiny", "--device", "cpu"]
    command += ["--readers", "2", "--scratch", str(tmp_path), "--json", str(out), *options]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        timeout=300,
    )
    return done, out


@pytest.mark.slow
def test_the_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu(tmp_path):
    done, out = run_bench(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["scale"] == "tiny" and results["device"] == "cpu"
    assert "skipped" not in results and "errors" not in results
    peaks, extraction, loader, steps, training, flips, evaluation = (
        results[part]
        for part in ("peaks", "extraction", "loader", "steps", "training", "flips", "evaluation")
    )
    assert all(peaks[precision] > 0 for precision in ("bfloat16", "float16", "tf32", "float32"))
    assert extraction["videos"] == 8 and "pyav" in extraction["decoders"]
    assert all(rates["extract_videos_per_second"] > 0 for rates in extraction["decoders"].values())
    assert extraction["otam_minutes"] > 0
    assert set(loader["tiers"]) == {"device", "host", "store"}
    assert all(tier["episodes_per_second"] > 0 for tier in loader["tiers"].values())
    # every step mode in every precision the CPU runs, each against its analytic bound
    ran = {(row["step_mode"], row["precision"]) for row in steps["rows"]}
    assert ran == {(mode, name) for mode in ("eager", "batched") for name in CPU_POLICIES}
    assert all(row["over_own_bound"] > 0 and row["over_bf16_bound"] > 0 for row in steps["rows"])
    assert steps["step_gflop"] > 0
    assert training["loop_episodes_per_second"] > 0 and training["otam_minutes_from_steps"] > 0
    assert flips["reference"] == "float32" and flips["predictions"] == 1000 * 5
    assert set(flips["flip_rate"]) == set(CPU_POLICIES) - {"float32"}
    assert all(0 <= rate <= 1 for rate in flips["flip_rate"].values())
    assert evaluation["episodes"] == 40 and set(evaluation["paths"]) == {"before", "now"}
    assert evaluation["same_accuracies"] and evaluation["read_scaling"]["more_workers"] == 2
    assert all(path["otam_seconds"] > 0 for path in evaluation["paths"].values())
    # the sweep's runs, one by one and by sact sweep, bitwise the same, side by side within the
    # tolerance with the same test accuracies; OTAM's 15 extrapolated both ways
    sweep = results["sweep"]
    assert sweep["runs"] == 2 and sweep["bitwise_same_runs"] and sweep["otam"]["runs"] == 15
    closeness = sweep["side_by_side_closeness"]
    assert closeness["within_tolerance"] and closeness["same_test_accuracies"]
    assert sweep["otam"]["minutes"] > 0 and sweep["otam"]["side_by_side_minutes"] > 0
    assert "SSv2-OTAM comparison, 15" in done.stdout and "15 runs side by side" in done.stdout
    for measure in ("(a) pyav: sact extract", "loader, store tier", "75,000 episodes",
                    "step, eager", "flips against float32",
                    "evaluation now: SSv2-OTAM, 2,857 videos + 10,000 episodes"):  # fmt: skip
        assert measure in done.stdout


def test_parts_that_would_overrun_the_budget_are_skipped_with_a_note(tmp_path):
    done, out = run_bench(tmp_path, "--parts", "peaks,evaluation", "--budget-s", "0.5")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["skipped"]) == {"peaks", "evaluation"}
    assert "s of the budget left" in results["skipped"]["evaluation"]
    assert "peaks" not in results and "evaluation skipped" in done.stdout
    refused, _ = run_bench(tmp_path, "--budget-s", "0")
    assert refused.returncode == 2 and "--budget-s must be positive" in refused.stderr
