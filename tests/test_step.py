"""Step modes (fewshot/step.py): batched and compiled compute eager's loss and gradients within
float32 rounding, a step that cannot compile runs eager after one line, graphs need CUDA."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config

from sact.fewshot.precision import resolve_precision
from sact.fewshot.step import BatchedStep, StepError, eager_step, make_step, resolved_step
from sact.fewshot.training import read_metrics, train
from tests.test_model import DIM, FRAMES, PATCHES, make_model
from tests.test_training import tiny

CPU = torch.device("cpu")
WAY, SHOT, QUERIES, EPISODES = 3, 2, 2, 3
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tasks(seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """EPISODES episodes as the trainer loads them: float16 videos, class-major support labels
    on the CPU, query labels."""
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(EPISODES):
        support = torch.randn(WAY * SHOT, FRAMES, PATCHES, DIM, generator=generator).half()
        query = torch.randn(WAY * QUERIES, FRAMES, PATCHES, DIM, generator=generator).half()
        tasks.append(
            (
                support,
                torch.arange(WAY).repeat_interleave(SHOT),
                query,
                torch.arange(WAY).repeat_interleave(QUERIES),
            )
        )
    return tasks


def run(step, *, precision: str = "float32") -> tuple[float, int, int, list[torch.Tensor]]:
    """One step's (mean loss, correct, queries) and the gradients it left."""
    model = make_model(input_norm=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, correct, count = step(model, make_tasks(), resolve_precision(precision, CPU), scaler)
    return float(loss), int(correct), count, [p.grad.clone() for p in model.parameters()]


def assert_same_step(got, expected, *, exact: bool, rounding: float = 1e-6) -> None:
    """`rounding`: the gradients' tolerance as a share of the largest (float32's by default; a
    bfloat16 operand carries 8 bits)."""
    loss, correct, count, grads = got
    e_loss, e_correct, e_count, e_grads = expected
    assert (correct, count) == (e_correct, e_count) and count == EPISODES * WAY * QUERIES
    if exact:
        assert loss == e_loss
        assert all(torch.equal(g, e) for g, e in zip(grads, e_grads, strict=True))
    else:
        assert loss == pytest.approx(e_loss, rel=1e-5)
        # against the largest gradient: some (a bias before a LayerNorm) are rounding noise
        largest = max(e.abs().max().item() for e in e_grads)
        for g, e in zip(grads, e_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=100 * rounding, atol=rounding * largest)


@pytest.mark.parametrize("precision", ["float32", "bf16-keys"])
def test_batched_step_is_eagers_within_rounding(precision):
    said: list[str] = []
    batched = BatchedStep(compile_mode=None, say=said.append)
    assert_same_step(
        run(batched, precision=precision),
        run(eager_step, precision=precision),
        exact=False,
        rounding=1e-6 if precision == "float32" else 2**-8,
    )
    assert said == []  # nothing compiled, nothing to say


# What this file compiles is batched_loss through dynamo, AOTAutograd and inductor's lowering, as
# on CUDA (where inductor then writes Triton, not C++). The CPU's C++ flavour is incidental, and
# its default (one g++ run per vectorised kernel, ~35 per step) took most of a minute idle; a C++
# wrapper builds each graph's kernels into one library, scalar code compiles faster.
FAST_CPU_COMPILE = {"cpp_wrapper": True, "cpp.vec_isa_ok": False}


@pytest.mark.slow
def test_compiled_step_is_eagers_within_rounding_and_reports_its_compile_time():
    said: list[str] = []
    compiled = BatchedStep(compile_mode="default", say=said.append)
    with torch._inductor.config.patch(FAST_CPU_COMPILE):
        assert_same_step(run(compiled), run(eager_step), exact=False)
        assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
        assert not compiled.fell_back
        assert said == [f"step compiled (default) in {compiled.compile_seconds:.1f} s"]
        assert_same_step(run(compiled), run(eager_step), exact=False)  # the compiled step again
        assert len(said) == 1


def test_a_step_that_cannot_compile_says_so_in_one_line_and_runs_eager(monkeypatch):
    def broken_compile(fn, **_):
        def fails(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler found\nand a long traceback")

        return fails

    monkeypatch.setattr("sact.fewshot.step.torch.compile", broken_compile)
    said: list[str] = []
    compiled = BatchedStep(compile_mode="default", say=said.append)
    assert_same_step(run(compiled), run(eager_step), exact=True)
    assert said == [
        "torch.compile failed (RuntimeError: InductorError: no C++ compiler found); "
        "this run's steps run eager"
    ]
    assert compiled.fell_back and compiled.compile_seconds is None
    assert_same_step(run(compiled), run(eager_step), exact=True)
    assert len(said) == 1  # said once, not every step


def test_step_modes_per_device():
    cuda = torch.device("cuda")
    assert resolved_step("auto", CPU) == "eager" and resolved_step("auto", cuda) == "compiled"
    assert resolved_step("graphs", cuda) == "graphs"
    with pytest.raises(StepError, match="--step graphs replays CUDA graphs"):
        make_step("graphs", CPU, say=print)
    assert make_step("eager", CPU, say=print) is eager_step


def test_a_run_trains_with_the_batched_step(synthetic_store, tmp_path):
    store = (synthetic_store.location, synthetic_store.split)
    result = train(tiny(store, tmp_path / "run", iterations=4, step="batched", device="cpu"))
    assert result.steps == 4
    losses = [r["loss"] for r in read_metrics(tmp_path / "run/metrics.jsonl") if "loss" in r]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
