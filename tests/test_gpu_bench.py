"""bench/gpu.py, the prepared GPU benchmark of issue 11, runs here at a tiny size on the CPU, so a
change elsewhere cannot break it unseen before a GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.mark.slow
def test_the_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCH), "--scale", "tiny", "--device", "cpu"]
    command += ["--readers", "2", "--scratch", str(tmp_path), "--json", str(out)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["scale"] == "tiny" and results["device"] == "cpu"
    extraction, loader, training, evaluation = (
        results[part] for part in ("extraction", "loader", "training", "evaluation")
    )
    assert extraction["videos"] == 8 and "pyav" in extraction["decoders"]
    assert all(rates["extract_videos_per_second"] > 0 for rates in extraction["decoders"].values())
    assert extraction["otam_minutes"] > 0
    assert set(loader["tiers"]) == {"device", "host", "store"}
    assert all(tier["episodes_per_second"] > 0 for tier in loader["tiers"].values())
    assert training["step_flops"] > 0 and training["loop_episodes_per_second"] > 0
    assert evaluation["episodes"] == 40 and evaluation["otam_seconds"] > 0
    for measure in ("(a) pyav: sact extract", "(b) loader, store tier", "(b) 75,000 episodes",
                    "(c) SSv2-OTAM: 2,857 videos + 10,000 episodes"):  # fmt: skip
        assert measure in done.stdout
