"""How a training step runs (`sact train --step`): the same arithmetic, launched differently.

- eager: each episode's forward, then its backward, in turn: sact's step since it had one, and the
  CPU's bitwise-repeatable path (tests/test_training.py resumes a run bit for bit on it).
- batched: the step's episodes in one forward and one backward: every video of every episode
  embedded by one `embed` call (each projection one matmul over all their frames), every episode
  matched by one `match_episodes` call; training episodes all have one N-way K-shot Q-query shape.
  The same sums in another order: the loss equals eager's within float32 rounding, not bit for
  bit; it holds all the episodes' activations at once.
- compiled: the batched forward and its loss compiled by `torch.compile` (the backward with it,
  through AOTAutograd) at the run's first step, whose time (`compile_seconds`) is reported. A step
  that cannot compile (no C++ compiler, an op the compiler lacks) says why in one line and the run
  goes on eager.
- graphs: compiled in torch.compile's "reduce-overhead" mode, which replays the fixed-shape step
  as CUDA graphs (no launch per kernel). CUDA only: refused in one line on other devices.
- auto: eager on the CPU (bit for bit as before); compiled on CUDA, a choice pending the GPU run
  of bench/gpu.py (bench/RESULTS.md, "Precision policies and step modes").

A step returns the mean loss over its episodes, the correct queries and their count, all on the
device (read once after the optimiser step: no device sync per episode).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from sact.common.errors import SactError
from sact.fewshot.config import STEPS
from sact.fewshot.heads import FewShotHead, episode_shape
from sact.fewshot.precision import Precision

# one episode as the trainer loads it: support videos (N*K, T, P, D), support labels (N*K,) on the
# CPU, class-major; query videos (N*Q, T, P, D); query labels (N*Q,) on the device
LoadedEpisode = tuple[Tensor, Tensor, Tensor, Tensor]
StepTotals = tuple[Tensor, Tensor, int]  # mean loss, correct queries (both on the device), queries


class Step(Protocol):
    def __call__(
        self,
        model: FewShotHead,
        episodes: Sequence[LoadedEpisode],
        precision: Precision,
        scaler: torch.amp.GradScaler,
    ) -> StepTotals: ...


class StepError(SactError):
    """A step mode that cannot run on the device asked for; one line for the user."""


def resolved_step(name: str, device: torch.device) -> str:
    """The step mode `name` is on `device`; graphs off CUDA refused in one line."""
    if name not in STEPS:
        raise StepError(f"--step must be one of {', '.join(STEPS)}, got {name!r}")
    if name == "auto":
        return "compiled" if device.type == "cuda" else "eager"
    if name == "graphs" and device.type != "cuda":
        others = [step for step in STEPS if step not in ("auto", "graphs")]
        raise StepError(
            f"--step graphs replays CUDA graphs, which need a CUDA device; on {device.type} use "
            f"{', '.join(others)}"
        )
    return name


def eager_step(
    model: FewShotHead,
    episodes: Sequence[LoadedEpisode],
    precision: Precision,
    scaler: torch.amp.GradScaler,
) -> StepTotals:
    """Each episode's forward and backward in turn, the gradients summed over the episodes."""
    device = episodes[0][3].device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for support, support_labels, query, query_labels in episodes:
        with precision:
            logits = model(support, support_labels, query)  # (N*Q, N)
        loss = F.cross_entropy(logits.float(), query_labels) / len(episodes)
        with precision.float32_matmuls():
            scaler.scale(loss).backward()
        total_loss += loss.detach()
        correct += (logits.argmax(dim=1) == query_labels).sum()
        count += len(query_labels)
    return total_loss, correct, count


def batched_loss(
    model: FewShotHead,
    videos: Tensor,
    query_labels: Tensor,
    *,
    supports: int,
    episodes: int,
    way: int,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the queries of E same-shaped episodes and their logits (E*Q, N).

    videos: the E episodes' support videos (class-major, episode by episode), then their queries;
    `supports` of them are support videos. query_labels (E*Q,).
    """
    embedding = model.embed(videos)  # (E*(N*K + Q), ...) per field
    logits = model.match_episodes(
        embedding[:supports], embedding[supports:], episodes=episodes, way=way
    ).flatten(0, 1)  # (E, Q, N) -> (E*Q, N)
    return F.cross_entropy(logits.float(), query_labels), logits


class BatchedStep:
    """The step's episodes in one forward and one backward; `compile_mode` compiles it."""

    def __init__(self, *, compile_mode: str | None, say: Callable[[str], None]) -> None:
        self.say = say
        self.compile_mode = compile_mode
        self.loss_of: Callable[..., tuple[Tensor, Tensor]] = batched_loss
        if compile_mode is not None:
            self.loss_of = torch.compile(batched_loss, mode=compile_mode, dynamic=False)
        self.compiled_once = compile_mode is None  # nothing to compile: nothing to wait for
        self.compile_seconds: float | None = None
        self.fell_back = False

    def __call__(
        self,
        model: FewShotHead,
        episodes: Sequence[LoadedEpisode],
        precision: Precision,
        scaler: torch.amp.GradScaler,
    ) -> StepTotals:
        if self.fell_back:
            return eager_step(model, episodes, precision, scaler)
        if self.compiled_once:
            return self.run(model, episodes, precision, scaler)
        started = time.perf_counter()
        try:
            totals = self.run(model, episodes, precision, scaler)
        except Exception as error:  # whatever the compiler raised: the run goes on eager
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.say(
                f"torch.compile failed ({type(error).__name__}: {reason[:200]}); "
                "this run's steps run eager"
            )
            self.fell_back = True
            model.zero_grad(set_to_none=True)  # what a half-run step left is not this step's
            return eager_step(model, episodes, precision, scaler)
        self.compiled_once = True
        self.compile_seconds = time.perf_counter() - started
        self.say(f"step compiled ({self.compile_mode}) in {self.compile_seconds:.1f} s")
        return totals

    def run(
        self,
        model: FewShotHead,
        episodes: Sequence[LoadedEpisode],
        precision: Precision,
        scaler: torch.amp.GradScaler,
    ) -> StepTotals:
        supports = [episode[0] for episode in episodes]
        queries = [episode[2] for episode in episodes]
        query_labels = torch.cat([episode[3] for episode in episodes])  # (E*Q,)
        way = int(episodes[0][1].max()) + 1
        support_count = sum(len(support) for support in supports)
        episode_shape(support_count, len(query_labels), episodes=len(episodes), way=way)
        videos = torch.cat([*supports, *queries])  # (E*(N*K + Q), T, P, D)
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are spent
        with precision:
            loss, logits = self.loss_of(
                model,
                videos,
                query_labels,
                supports=support_count,
                episodes=len(episodes),
                way=way,
            )
        with precision.float32_matmuls():
            scaler.scale(loss).backward()
        correct = (logits.argmax(dim=1) == query_labels).sum()
        return loss.detach().clone(), correct, len(query_labels)


def make_step(name: str, device: torch.device, *, say: Callable[[str], None]) -> Step:
    """The step of mode `name` (auto resolved for `device`); `say` tells the user about
    compiling."""
    resolved = resolved_step(name, device)
    if resolved == "eager":
        return eager_step
    compile_mode = {"batched": None, "compiled": "default", "graphs": "reduce-overhead"}[resolved]
    return BatchedStep(compile_mode=compile_mode, say=say)
