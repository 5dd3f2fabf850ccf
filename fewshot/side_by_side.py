"""Runs of one architecture trained side by side in one process (`sact sweep --side-by-side`).

Each run keeps everything `sact train` gives it: its seed, its episodes drawn from its own
generator, its optimiser and loss scaler, its learning-rate schedule, its validations, checkpoints
and metrics in its own folder (fewshot/training.py's `Trainer`, one per run). Only the step is
shared: the R runs' parameters are stacked (`torch.func.stack_module_state`) and one forward and
one backward per episode of the step serve them all (`torch.func.vmap` over `functional_call`,
each run on its own episode). Each run's gradients are then handed back to its own model, and its
own optimiser steps on them, exactly as it would alone: nothing per-run (AdamW's moments, weight
decay, the schedule, the loss scale) is ever stacked.

Equal to the runs trained one by one within float32 rounding, not bit for bit: vmap turns each
run's matmul into one batched matmul over the runs, which sums in another order
(tests/test_side_by_side.py states the tolerance).

What stacks: runs of one model kind and configuration, one episode shape (way, shot, query,
episodes per step), device and precision policy, whose model draws no random numbers while it
trains. A model with dropout (TRX) draws from torch's one global generator: side by side the runs'
draws would interleave and no run would be the run trained alone, so such runs train one by one,
as do models with nothing to train (the nearest mean). The runs' `--step` mode is not used: the
side-by-side step is eager's arithmetic, episode by episode, vmapped over the runs.

Resume: each run restores its own last checkpoint, as `sact train --resume` does; runs at
different steps still stack (each has its own step count and schedule), and a run that reaches
its last step leaves the group while the others go on. Ctrl-C ends the step under way, saves every
run and stops; a second Ctrl-C stops at once, each run keeping its last checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import TextColumn
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from sact.common.errors import Interrupted
from sact.common.progress import progress_display
from sact.fewshot.config import TrainConfig
from sact.fewshot.heads import FewShotHead
from sact.fewshot.precision import Precision
from sact.fewshot.step import LoadedEpisode, StepTotals
from sact.fewshot.training import (
    Trainer,
    TrainResult,
    on_first_interrupt,
    open_run,
    run_errors,
)

SHAPE_FIELDS = ("way", "shot", "query", "tasks_per_batch")  # one episode shape for every run
# the device types on which `sact sweep --side-by-side auto` trains side by side: those where it
# was measured faster than one by one (docs/SWEEP.md, "Side by side"). None: on the CPU
# bench/sweep.py measured it slower; on CUDA bench/gpu.py's sweep part has not run yet
AUTO_ON: frozenset[str] = frozenset()
# How close side by side keeps each run to the run trained alone (tests/test_side_by_side.py checks
# it, bench/sweep.py reports it). vmap's batched matmul sums each run's products in another order
# than the run's own matmul: the gradients differ in the last float32 bits, and the tests' 12
# AdamW steps keep the weights this close...
WEIGHT_TOLERANCE = 1e-4
# ...but for SA-CT's parameters whose gradient is zero in exact arithmetic: a bias on every value
# cancels in match's differences (the attention weights sum to 1), one on every support key adds
# the same score to every (k, m) a query patch attends to (softmax ignores it). Their gradients are
# rounding noise, whose sign AdamW turns into steps of up to lr each (`adamw_noise_bound`)
ZERO_GRADIENT = frozenset({"to_value.bias", "norm_support.bias"})


def adamw_noise_bound(config: TrainConfig) -> float:
    """How far apart two runs' zero-gradient parameters can drift: lr per step, each way."""
    return 2 * config.lr * config.iterations


def side_by_side_on(choice: str, device: torch.device) -> bool:
    """Whether `--side-by-side` `choice` (auto, on or off) trains side by side on `device`."""
    return choice == "on" or (choice == "auto" and device.type in AUTO_ON)


def draws_random_numbers(model: FewShotHead) -> bool:
    """Whether training the model draws from torch's generator (dropout is its only source)."""
    return any(
        isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0
        for module in model.modules()
    )


def stack_refusal(trainers: Sequence[Trainer]) -> str | None:
    """Why these runs cannot train side by side, in words; None when they can."""
    first = trainers[0]
    if first.optimizer is None:
        return f"{first.config.model} has nothing to train"
    if draws_random_numbers(first.model):
        return f"{first.config.model} draws dropout from torch's one generator"
    for trainer in trainers[1:]:
        if (trainer.config.model, trainer.model.config()) != (
            first.config.model,
            first.model.config(),
        ):
            return "their models differ"
        if any(getattr(trainer.config, n) != getattr(first.config, n) for n in SHAPE_FIELDS):
            return "their episodes differ in shape"
        if (trainer.device, trainer.precision.name) != (first.device, first.precision.name):
            return "their devices or precision policies differ"
    return None


class StackedStep:
    """One training step of R runs of one architecture: a vmapped forward and backward per
    episode of the step, each run on its own episode and parameters."""

    def __init__(self, model: FewShotHead) -> None:
        # the architecture without weights: functional_call gives it each run's
        self.skeleton = copy.deepcopy(model).to("meta")

    def logits(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
    ) -> Tensor:
        """One run's episode through its own weights: logits (N*Q, N)."""
        return functional_call(self.skeleton, (params, buffers), (support, support_labels, query))

    def __call__(
        self,
        models: Sequence[FewShotHead],
        episodes: Sequence[Sequence[LoadedEpisode]],
        precision: Precision,
        scalers: Sequence[torch.amp.GradScaler],
    ) -> list[StepTotals]:
        """Run r's episodes `episodes[r]` through `models[r]`; each model's gradients are left in
        its parameters' `.grad`, scaled by `scalers[r]`, as eager's step leaves them."""
        params, buffers = stack_module_state(list(models))  # each (R, ...)
        runs, per_run = len(models), len(episodes[0])
        device = episodes[0][0][3].device
        total_loss = torch.zeros(runs, device=device)
        correct = torch.zeros(runs, dtype=torch.long, device=device)
        count = 0
        for index in range(per_run):
            batch = [run_episodes[index] for run_episodes in episodes]
            # class-major training episodes of one shape: one label list serves every run
            support_labels = batch[0][1]
            if not all(torch.equal(episode[1], support_labels) for episode in batch):
                raise ValueError("runs side by side need their support videos in one class order")
            supports = torch.stack([episode[0] for episode in batch])  # (R, N*K, T, P, D)
            queries = torch.stack([episode[2] for episode in batch])  # (R, N*Q, T, P, D)
            labels = torch.stack([episode[3] for episode in batch])  # (R, N*Q)

            with precision:
                # (R, N*Q, N); the support labels unbatched: on the CPU, as the model checks them
                logits = vmap(self.logits, in_dims=(0, 0, 0, None, 0))(
                    params, buffers, supports, support_labels, queries
                )
            per_query = F.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), reduction="none"
            ).view(runs, -1)  # (R, N*Q)
            losses = per_query.mean(dim=1) / per_run  # (R,)
            # the runs' losses are independent: the sum's gradient in run r's slice is run r's own
            scaled = torch.stack(
                [scaler.scale(loss) for scaler, loss in zip(scalers, losses, strict=True)]
            ).sum()
            with precision.float32_matmuls():
                scaled.backward()
            total_loss += losses.detach()
            correct += (logits.argmax(dim=2) == labels).sum(dim=1)
            count += labels.shape[1]
        for run, model in enumerate(models):
            for name, parameter in model.named_parameters():
                stacked = params[name].grad
                parameter.grad = None if stacked is None else stacked[run]
        return [(total_loss[run], correct[run], count) for run in range(runs)]


@dataclass
class Lane:
    """One run of the group: its trainer and torch's generator as the run alone would hold it
    (saved in its checkpoints; it draws nothing while training, so it stays as built)."""

    trainer: Trainer
    torch_state: Tensor
    cuda_state: Tensor | None

    @classmethod
    def opened(cls, config: TrainConfig, console: Console | None) -> Lane:
        """The run of `config` (seeding torch as it builds its model) with that generator."""
        trainer = open_run(config, console)
        cuda = torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None
        return cls(trainer, torch.get_rng_state(), cuda)

    @contextmanager
    def own_generator(self) -> Iterator[None]:
        """Torch's generator set to this run's for the block (what its checkpoints save)."""
        outside = torch.get_rng_state()
        torch.set_rng_state(self.torch_state)
        cuda_outside = None
        if self.cuda_state is not None:
            cuda_outside = torch.cuda.get_rng_state(self.trainer.device)
            torch.cuda.set_rng_state(self.cuda_state, self.trainer.device)
        try:
            yield
        finally:
            self.torch_state = torch.get_rng_state()
            torch.set_rng_state(outside)
            if self.cuda_state is not None and cuda_outside is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.trainer.device)
                torch.cuda.set_rng_state(cuda_outside, self.trainer.device)

    @property
    def left(self) -> bool:
        return self.trainer.step < self.trainer.iterations


def train_side_by_side(
    configs: Sequence[TrainConfig], console: Console | None = None
) -> list[TrainResult]:
    """Train the runs of `configs` side by side, or one by one, each alone, when they cannot
    stack (`stack_refusal`, said on the console); their results in the order given."""
    lanes = [Lane.opened(config, console) for config in configs]
    refusal = stack_refusal([lane.trainer for lane in lanes])
    if refusal is not None:
        if console is not None:
            console.print(f"these runs train one by one: {refusal}", highlight=False)
        return [run_alone(lane) for lane in lanes]
    say = console.print if console is not None else None
    if say is not None:
        say(f"{len(lanes)} runs train side by side", highlight=False)
    for lane in lanes:
        with lane.own_generator(), run_errors(lane.trainer.run_dir):
            lane.trainer.load_features()
            lane.trainer.validate_untrained()
    steps(lanes, console)
    return [lane.trainer.result() for lane in lanes]


def run_alone(lane: Lane) -> TrainResult:
    with lane.own_generator(), run_errors(lane.trainer.run_dir):
        return lane.trainer.run()


def steps(lanes: Sequence[Lane], console: Console | None) -> None:
    """Every run's remaining steps, one stacked step for the runs with steps left at a time."""
    step = StackedStep(lanes[0].trainer.model)
    precision = lanes[0].trainer.precision
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True

    status = TextColumn("{task.fields[status]}")
    with ExitStack() as stack:
        batches = {id(lane): stack.enter_context(closing(lane.trainer.batches())) for lane in lanes}
        progress = stack.enter_context(
            progress_display(console, status, label="train", transient=False)
        )
        bars = {
            id(lane): progress.add_task(
                lane.trainer.run_dir.name,
                total=lane.trainer.iterations,
                completed=lane.trainer.step,
                status="",
            )
            for lane in lanes
        }
        stack.enter_context(on_first_interrupt(interrupt))
        try:
            while not interrupted and any(lane.left for lane in lanes):
                active = [lane for lane in lanes if lane.left]
                drawn = [next(batches[id(lane)]) for lane in active]
                for lane in active:
                    lane.trainer.begin_step()
                totals = step(
                    [lane.trainer.model for lane in active],
                    [episodes for episodes, _ in drawn],
                    precision,
                    [lane.trainer.scaler for lane in active],
                )
                for lane, run_totals, (_, rng_state) in zip(active, totals, drawn, strict=True):
                    trainer = lane.trainer
                    with lane.own_generator(), run_errors(trainer.run_dir):
                        line = trainer.after_step(*trainer.take_step(run_totals), rng_state)
                    progress.update(bars[id(lane)], completed=trainer.step, status=line)
                if interrupted:  # each run's step under way saved, with its generator after it
                    for lane, (_, rng_state) in zip(active, drawn, strict=True):
                        with lane.own_generator(), run_errors(lane.trainer.run_dir):
                            lane.trainer.save_unsaved(rng_state)
        except KeyboardInterrupt as again:  # a second Ctrl-C: stopped at once
            raise Interrupted(
                "stopped at once; each run keeps its last checkpoint",
                "continue with the same command",
            ) from again
    if interrupted and any(lane.left for lane in lanes):
        for lane in lanes:
            lane.trainer.stop_tensorboard()
        saved = ", ".join(
            f"{lane.trainer.run_dir.name} at step {lane.trainer.step}" for lane in lanes
        )
        raise Interrupted(f"interrupted: saved {saved}", "continue with the same command")
