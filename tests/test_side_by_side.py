"""Runs trained side by side (fewshot/side_by_side.py) are the runs trained one by one, resumed
from whatever state each was left in, and runs that cannot stack train one by one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sact.fewshot.checkpoints import build_model, read_checkpoint
from sact.fewshot.config import EvalConfig
from sact.fewshot.evaluation import evaluate
from sact.fewshot.side_by_side import (
    WEIGHT_TOLERANCE,
    ZERO_GRADIENT,
    adamw_noise_bound,
    draws_random_numbers,
    train_side_by_side,
)
from sact.fewshot.training import read_metrics, train
from tests.test_training import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = (0, 1, 2)


@pytest.fixture
def store(synthetic_store):
    return synthetic_store.location, synthetic_store.split


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints/last/model.safetensors")


def validations(run) -> list[tuple[int, float]]:
    return [(r["step"], r["val_accuracy"]) for r in read_metrics(run / "metrics.jsonl")
            if "val_accuracy" in r]  # fmt: skip


def test_a_run_alone_stops_at_step_4_and_the_group_resumes_it(store, tmp_path, ctrl_c_at_step):
    """Not bitwise (see WEIGHT_TOLERANCE, ZERO_GRADIENT): the same validations, best steps and
    test accuracy, and the weights within the tolerances, for a group whose runs start in three
    states: one finished alone (seed 0), one killed alone after its step-4 checkpoint (seed 1),
    a new one (seed 2)."""
    alone = {seed: tmp_path / f"alone{seed}" for seed in SEEDS}
    for seed in SEEDS:
        train(tiny(store, alone[seed], seed=seed))
    grouped = {seed: tmp_path / f"grouped{seed}" for seed in SEEDS}
    train(tiny(store, grouped[0], seed=0))
    with ctrl_c_at_step(7):
        train(tiny(store, grouped[1], seed=1))
    assert read_checkpoint(grouped[1] / "checkpoints/last").step == 4

    configs = [tiny(store, grouped[seed], seed=seed, resume=seed < 2) for seed in SEEDS]
    results = train_side_by_side(configs)

    assert [result.steps for result in results] == [12, 12, 12]
    for seed in SEEDS:
        assert validations(grouped[seed]) == validations(alone[seed])
        a, b = weights(alone[seed]), weights(grouped[seed])
        assert a.keys() == b.keys()
        for name in a:
            bound = adamw_noise_bound(configs[seed]) if name in ZERO_GRADIENT else WEIGHT_TOLERANCE
            assert torch.allclose(a[name], b[name], rtol=0, atol=bound), name
        alone_best = read_checkpoint(alone[seed] / "checkpoints/best").step
        assert read_checkpoint(grouped[seed] / "checkpoints/best").step == alone_best
    scored = [
        evaluate(EvalConfig(run=str(run), episodes=30, shots=(1,), device="cpu"))
        for run in (alone[2], grouped[2])
    ]
    accuracies = [next(iter(s.settings[0].runs.values())).accuracy for s in scored]
    assert accuracies[0] == accuracies[1]


def test_runs_with_dropout_train_one_by_one_bit_for_bit(store, tmp_path):
    """TRX's dropout draws from torch's one generator: side by side its runs' draws would
    interleave, so they train one by one, each exactly the run alone."""
    trx = build_model("trx", {"dim": 8, "frames": 4, "grid": [2, 2]})
    assert draws_random_numbers(trx)
    assert not draws_random_numbers(build_model("sact", {"dim": 8, "frames": 4, "grid": [2, 2]}))
    options = {"model": "trx", "iterations": 4, "val_every": 2}
    train(tiny(store, tmp_path / "alone", seed=1, **options))
    train_side_by_side([tiny(store, tmp_path / f"grouped{seed}", seed=seed, **options)
                        for seed in (0, 1)])  # fmt: skip
    a, b = weights(tmp_path / "alone"), weights(tmp_path / "grouped1")
    assert all(torch.equal(a[k], b[k]) for k in a)
