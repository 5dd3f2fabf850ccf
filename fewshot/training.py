"""Episodic training of a few-shot head on cached features: `train(TrainConfig(...))`.

One step draws `tasks_per_batch` episodes from the train split, runs the model on each and
accumulates the gradients of the mean cross-entropy, then takes one optimiser step. Every
`val_every` steps the model is scored on a fixed set of val episodes (each val video embedded
once), and the `last` checkpoint (with everything needed to resume) and, when val accuracy
improved, the `best` one are written. The validation before the first step scores the untrained
model: it is the curve's first point and the `untrained` checkpoint, never `best`, which is the
best of the trained steps (the rule for what is scored: fewshot/selection.py).

Augmented views (docs/STORE.md): when the store holds several views of every train video, each
video of each episode is read in a view drawn uniformly from `views` (by default all the views the
whole train split has, the canonical one included; config.json records them by name), so an epoch
does not repeat the same tensors. Validation and evaluation read the canonical view.

Determinism: the episodes, their frame offsets and views come from one `np.random.Generator(seed)`,
drawn in order in the main thread (reads run ahead in threads, which does not change what is
drawn); the generator's state after each step is saved with the checkpoint, as are the optimiser
and torch RNG states. `--resume` therefore continues exactly where the last checkpoint was taken:
same episodes, frames, schedule and RNG states. Ctrl-C (SIGINT) lets the step under way end and
saves it as `last` before the run stops (a second Ctrl-C stops at once, keeping the last
checkpoint), so an interrupt loses no step. On the CPU the continued run has bitwise the same
weights and metrics as one that was never interrupted (tests/test_training.py and
tests/test_interrupt.py check it). On a GPU two runs, interrupted or not, agree only within
floating-point tolerance: cuDNN's convolution backward (the CPE) and atomic adds are
nondeterministic and no deterministic-algorithm flags are set, so the weights differ in the last
bits and drift further apart over many steps.

Defaults for a head on frozen features, from `bench/train.py sweep` (bench/RESULTS.md): on a
synthetic store, at an equal budget of 1,200 episodes, AdamW at lr 1e-4 stayed near chance and
3e-4 lagged (0.49 val accuracy at 4 episodes per step) where 1e-3 reached 0.89-0.97 and 3e-3
0.98-1.00, with no instability up to 3e-3; the default lr 1e-3 keeps a factor 3 of headroom for
real features, whose scale differs from the synthetic ones. Weight decay 0.01; a 100-step linear
warm-up, then cosine decay to zero. 4 episodes per step: per episode, one episode per step learned
a little faster in the sweep, but four cost less time per episode (fewer optimiser steps and
validations per episode) and average the noisier gradients of real episodes (TRX averages 16);
a judgement, not a measurement on real data. 10,000
steps (40,000 episodes; a step on cached features is cheap), 300 fixed val episodes every 500
steps; the `best` checkpoint guards against over-fitting the train classes.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn

from sact.common.devices import resolve_device
from sact.common.errors import Interrupted, storage_error_reason
from sact.common.files import write_text_atomic
from sact.common.options import Checked
from sact.common.progress import progress_display
from sact.fewshot.accuracy import mean_and_interval, score_episodes
from sact.fewshot.attention import attention_weights, draw_attention, focused_patches
from sact.fewshot.checkpoints import (
    Checkpoint,
    build_model,
    checkpoint_folder,
    read_checkpoint,
    read_resume_state,
    save_checkpoint,
)
from sact.fewshot.config import CONFIG_FILE, TrainConfig, TrainingError, prepare_training
from sact.fewshot.episodes import (
    Episode,
    EpisodeError,
    EpisodeSampler,
    SplitSource,
    VideoPool,
    build_pool,
    resolve_split,
)
from sact.fewshot.features import (
    BYTES_PER_GB,
    Prefetcher,
    SplitFeatures,
    segment_frames,
    split_features,
    to_device,
)
from sact.fewshot.figures import training_curve
from sact.fewshot.heads import FewShotHead
from sact.fewshot.model import SACT
from sact.fewshot.precision import resolve_precision
from sact.fewshot.step import LoadedEpisode, StepTotals, make_step, resolved_step
from sact.fewshot.tensorboard import FOLDER as TENSORBOARD_FOLDER
from sact.fewshot.tensorboard import TensorBoardLog
from sact.store.backends import FeatureSet, open_feature_set
from sact.store.feature_set import CANONICAL, is_url

# a numpy Generator's bit_generator.state: saved with each checkpoint, so a resumed run draws on
# exactly where the interrupted one stopped
RngState = Mapping[str, Any]
# one training episode as drawn: the episode, its support and query frames (n, T), and their
# views (n,) (None with a single training view)
DrawnEpisode = tuple[Episode, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]
SGD_MOMENTUM = 0.9
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
ATTENTION_FILE = "val_attention.png"  # with --log tensorboard, SA-CT only
ATTENTION_PATCHES = 2  # query patches drawn per frame
GRID_CELL_PX = 16  # size of a patch in the pixel-free attention figure


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    best_step: int
    best_val_accuracy: float
    last_val_accuracy: float
    data: str  # where the train features were served from
    parameters: int  # trainable parameters; 0: nothing to train (the nearest mean)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `iterations`."""
    if step <= config.warmup:
        return config.lr * step / max(1, config.warmup)
    progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """float16 autocast needs loss scaling; bfloat16 and float32 do not (a disabled scaler)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]):
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=SGD_MOMENTUM, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay)


def store_location(location: str) -> str:
    """A local store as an absolute path, so a run can be evaluated from any folder."""
    return location if is_url(location) else str(Path(location.removeprefix("file://")).resolve())


def default_run_dir(config: TrainConfig, feature_set: FeatureSet) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{feature_set.name}-{stamp}"


# ---- metrics ---------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is gone too
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run rewrites what came after its checkpoint."""
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


# ---- one training run ------------------------------------------------------------------------


@dataclass
class Data:
    """What a run reads: the feature set, the split, the pools and samplers."""

    feature_set: FeatureSet
    split: SplitSource
    train_pool: VideoPool
    val_pool: VideoPool
    train_sampler: EpisodeSampler
    val_episodes: list[Episode]
    train_views: tuple[str, ...]  # the stored views training draws from


def training_views(feature_set: FeatureSet, pool: VideoPool, asked: str) -> tuple[str, ...]:
    """The views training draws from: ``all`` (every view that holds the whole train split), or
    the views named, comma-separated, each of which must hold the whole train split."""
    rows = pool.store_indices
    missing = {
        name: int(np.sum(~feature_set.usable_in(name)[rows])) for name in feature_set.view_names()
    }
    if asked == "all":
        return tuple(name for name, count in missing.items() if count == 0)
    names = tuple(dict.fromkeys(name.strip() for name in asked.split(",") if name.strip()))
    if not names:
        raise TrainingError("--views must be all or view names separated by commas")
    for name in names:
        if name not in missing:
            raise TrainingError(
                f"feature set {feature_set.name} has no view {name!r}; it has: "
                + ", ".join(missing)
            )
        if missing[name]:
            raise TrainingError(
                f"view {name} lacks {missing[name]} of the train split's videos: extract them "
                f"(sact extract ... --view {name}) or leave the view out of --views"
            )
    return names


def prepare_data(config: TrainConfig, console: Console | None) -> Data:
    feature_set = open_feature_set(config.feats, config.feature_set)
    split = resolve_split(feature_set, config.split)
    train_pool = build_pool(feature_set, split, "train")
    val_pool = build_pool(feature_set, split, "val")
    train_views = training_views(feature_set, train_pool, config.views)
    unfinished = train_pool.unfinished() or val_pool.unfinished()
    try:
        samplers = [
            EpisodeSampler(pool, way=config.way, shot=config.shot, queries=config.query)
            for pool in (train_pool, val_pool)
        ]
    except EpisodeError as error:
        if unfinished is None:
            raise
        raise TrainingError(unfinished) from error  # the cause, not its consequence
    if console is not None:
        if split.note is not None:
            console.print(f"[yellow]warning:[/] {split.note}", highlight=False)
        if unfinished is not None:
            console.print(
                f"[yellow]warning:[/] {unfinished}; this run trains on the videos done so far",
                highlight=False,
            )
        console.print(f"split {split.description}: {train_pool.summary()}; {val_pool.summary()}")
        for sampler in samplers:
            if sampler.exclusion_note():
                console.print(sampler.exclusion_note())
    return Data(
        feature_set=feature_set,
        split=split,
        train_pool=train_pool,
        val_pool=val_pool,
        train_sampler=samplers[0],
        val_episodes=samplers[1].episodes(config.val_episodes, config.seed),
        train_views=train_views,
    )


def train(
    config: TrainConfig | Checked[TrainConfig],
    console: Console | None = None,
    *,
    on_validation: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `config.model` on the store's train split, validating on its val split.

    `on_validation(model)`, called after each validation, returns more numbers to log with it in
    metrics.jsonl (bench/views.py scores the test split over training this way). A config the
    command line prepared (`prepare_training`: merged and checked) runs as it is.
    """
    trainer = open_run(config, console)
    trainer.on_validation = on_validation
    with run_errors(trainer.run_dir):
        return trainer.run()


def open_run(config: TrainConfig | Checked[TrainConfig], console: Console | None) -> Trainer:
    """A run ready to train: its data prepared, its folder and config.json written (a new run)
    or its last checkpoint restored (`resume`)."""
    if not isinstance(config, Checked):
        config = prepare_training(config)
    config = config.config
    # the run continued; prepare_training refuses a resumed run without its directory
    run_dir = Path(config.out) if config.resume and config.out else None
    if config.iterations < config.warmup and console is not None:
        console.print(
            f"note: {config.iterations} steps are fewer than the {config.warmup} warm-up steps: "
            f"the learning rate rises to {learning_rate(config, config.iterations):.3g} and "
            f"never reaches --lr {config.lr:g} (--warmup sets the warm-up)",
            highlight=False,
            soft_wrap=True,
        )
    # saved resolved: auto's choice may change with sact's version, a run's policy never does
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    resolved_step(config.step, device)  # a step the device cannot run: refused before any file
    data = prepare_data(config, console)
    feature_set = data.feature_set
    frames = config.frames or feature_set.frames
    model = new_model(config, feature_set, frames)
    description: dict[str, Any] | None = None  # a new run's config.json
    if run_dir is None:
        run_dir = Path(config.out) if config.out else default_run_dir(config, feature_set)
        if (run_dir / CONFIG_FILE).exists():
            raise TrainingError(
                f"{run_dir} already holds a run; continue it with --resume or pick another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        config = replace(
            config,
            out=str(run_dir),
            feats=store_location(config.feats),
            views=",".join(data.train_views),
            precision=precision.name,
        )
        description = {
            "train": asdict(config),
            "model": config.model,
            "model_config": model.config(),
            "feature_set": feature_set.name,
            "store": store_location(feature_set.location),
            "split": data.split.name,
            "split_description": data.split.description,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "step_mode": resolved_step(config.step, device),  # what --step auto chose here
        }
    with run_errors(run_dir):
        if description is not None:
            write_text_atomic(run_dir / CONFIG_FILE, json.dumps(description, indent=2) + "\n")
        return Trainer(config, data, model, run_dir, frames, console)


@contextmanager
def run_errors(run_dir: Path) -> Iterator[None]:
    """A Ctrl-C outside the steps, or a storage failure, as one line naming how to go on."""
    try:
        yield
    except KeyboardInterrupt as interrupt:  # outside the steps (reading features, say)
        if not (run_dir / CONFIG_FILE).exists():
            raise  # nothing written: the same command starts it again
        raise Interrupted(f"interrupted; run {run_dir}", resume_instruction(run_dir)) from interrupt
    except OSError as error:  # a full disk: the checkpoints written before stay as they were
        again = (
            f"sact train --out {run_dir} --resume"
            if (run_dir / CONFIG_FILE).exists()
            else "the same command"
        )
        raise TrainingError(
            f"run {run_dir} stopped: {storage_error_reason(error)}; what it saved is intact: "
            f"once that is fixed, continue with {again}"
        ) from error


@contextmanager
def on_first_interrupt(interrupt: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C (SIGINT) calls `interrupt`, whose caller stops once the step under way is
    saved; a second one stops at once (KeyboardInterrupt), keeping the last checkpoint. Signal
    handlers belong to the main thread: elsewhere, Ctrl-C is the caller's. `interrupt` runs in
    the signal handler: it only sets state (a progress display prints from its own thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_instruction(run_dir: Path) -> str:
    return f"continue with: sact train --out {run_dir} --resume"


def new_model(config: TrainConfig, feature_set: FeatureSet, frames: int) -> FewShotHead:
    segment_frames(feature_set.frames, frames, 0)  # frames <= stored frames
    if config.model == "sact" and config.tmixer and frames % 2:
        even = f"--frames {frames - 1}, " if frames > 1 else ""
        raise TrainingError(
            f"SA-CT's TMixer halves the frames, so it needs an even T; the model would read "
            f"T={frames} (feature set {feature_set.name} stores {feature_set.frames}): "
            f"pass {even}or --no-tmixer"
        )
    torch.manual_seed(config.seed)
    model_config = {
        "dim": feature_set.dim,
        "frames": frames,
        "grid": list(feature_set.grid),
        **config.model_options(),
    }
    return build_model(config.model, model_config)


class Trainer:
    """The state of one run between steps, and the steps themselves."""

    def __init__(
        self,
        config: TrainConfig,
        data: Data,
        model: FewShotHead,
        run_dir: Path,
        frames: int,
        console: Console | None,
    ) -> None:
        self.config, self.data, self.run_dir, self.frames, self.console = (
            config,
            data,
            run_dir,
            frames,
            console,
        )
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.precision = resolve_precision(config.precision, self.device)
        # the forward's context (autocast, TF32 switches) and its autocast dtype
        self.autocast, self.amp_dtype = self.precision, self.precision.autocast_dtype
        if self.precision.note is not None and console is not None:
            console.print(self.precision.note)
        self.step_mode = resolved_step(config.step, self.device)
        self.run_step = make_step(self.step_mode, self.device, say=self.say)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config, self.parameters) if self.parameters else None
        self.scaler = loss_scaler(self.device, self.amp_dtype)
        self.rng = np.random.default_rng(config.seed)
        self.on_validation: Callable[[torch.nn.Module], dict[str, float]] | None = None
        self.step = 0
        # the best validation among the trained steps; none yet
        self.best_accuracy = -1.0
        self.best_step = 0
        self.last_accuracy = math.nan
        self.last_ci95 = math.nan  # of the last validation, on the val episodes
        self.validated_at: int | None = None  # the step of the last validation
        self.saved_at: int | None = None  # the step of the last checkpoint
        self.interrupted = False  # by Ctrl-C: the run stops once its step is saved
        self.metrics_path = run_dir / METRICS_FILE
        self.checkpoints = run_dir / "checkpoints"
        self.restored = config.resume and checkpoint_folder(self.checkpoints / "last").exists()
        if self.restored:
            self.restore()
        elif config.resume:  # killed before its first checkpoint: nothing to keep
            self.metrics_path.unlink(missing_ok=True)
        self.tensorboard = (
            TensorBoardLog(
                run_dir / TENSORBOARD_FOLDER, resumed_at=self.step if self.restored else None
            )
            if config.log == "tensorboard"
            else None
        )

    @cached_property
    def train_features(self) -> SplitFeatures:
        """Read on first use: a finished run that is resumed never loads its split."""
        return self.split_features(
            self.data.train_pool,
            cache_gb=self.config.cache_gb,
            device_tier=True,
            views=self.data.train_views,
        )

    @cached_property
    def val_features(self) -> SplitFeatures:
        """The canonical view only, kept off the GPU (validation reads each val video once), in
        what --cache-gb leaves."""
        cache_gb = self.config.cache_gb
        if cache_gb is not None and "train_features" in self.__dict__:
            cache_gb = max(0.0, cache_gb - self.train_features.plan.cached_bytes / BYTES_PER_GB)
        return self.split_features(self.data.val_pool, cache_gb=cache_gb, device_tier=False)

    def split_features(
        self,
        pool: VideoPool,
        *,
        cache_gb: float | None,
        device_tier: bool,
        views: tuple[str, ...] = (CANONICAL,),
    ) -> SplitFeatures:
        return split_features(  # loaded once for every run of a sweep (features_shared)
            self.data.feature_set,
            pool,
            frames=self.frames,
            device=self.device,
            cache_gb=cache_gb,
            readers=self.config.workers,
            device_tier=device_tier,
            console=self.console,
            views=views,
        )

    @property
    def iterations(self) -> int:
        """Steps to take: none for a model without parameters (the nearest mean)."""
        return self.config.iterations if self.optimizer is not None else 0

    # -- checkpoints --

    def description(self) -> dict[str, Any]:
        validated = self.validated_at == self.step
        return {
            "model": self.config.model,
            "model_config": self.model.config(),
            "feature_set": self.data.feature_set.name,
            "store": store_location(self.data.feature_set.location),
            "split": self.data.split.name,
            "step": self.step,
            "val_accuracy": self.last_accuracy if validated else None,
            "val_ci95": self.last_ci95 if validated else None,
        }

    def keep_untrained(self) -> None:
        """A run of an older sact kept its step-0 model as `best` when no later validation beat
        it; resumed, that checkpoint becomes `untrained` before a trained `best` replaces it."""
        best = checkpoint_folder(self.checkpoints / "best")
        untrained = self.checkpoints / "untrained"
        older = best.exists() and not checkpoint_folder(untrained).exists()
        if older and read_checkpoint(best).step == 0:
            best.rename(untrained)

    def save(self, *, best: bool, rng_state: RngState, untrained: bool = False) -> None:
        tensors: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
        if self.optimizer is not None:
            tensors["optimizer"] = self.optimizer.state_dict()
            tensors["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "numpy_rng": rng_state,
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
        }
        if untrained:
            save_checkpoint(
                self.checkpoints / "untrained", self.model, description=self.description()
            )
        if best:
            self.keep_untrained()
            save_checkpoint(self.checkpoints / "best", self.model, description=self.description())
        save_checkpoint(
            self.checkpoints / "last",
            self.model,
            description=self.description(),
            resume_tensors=tensors,
            resume_json=state,
        )
        self.saved_at = self.step

    def restore(self) -> None:
        folder = self.checkpoints / "last"
        checkpoint: Checkpoint = read_checkpoint(folder)
        if checkpoint.model != self.config.model or checkpoint.model_config != self.model.config():
            raise TrainingError(f"{folder} holds a different model than {self.run_dir}'s config")
        self.model.load_state_dict(checkpoint.build().state_dict())
        tensors, state = read_resume_state(checkpoint.folder)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(tensors["optimizer"])
            # A run saved under bfloat16 or float32 holds a disabled scaler's empty state; resumed
            # under float16 (another GPU), its scaler starts from the default scale instead.
            if tensors["scaler"]:
                self.scaler.load_state_dict(tensors["scaler"])
        torch.set_rng_state(tensors["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in tensors:
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.rng.bit_generator.state = state["numpy_rng"]
        self.step = self.saved_at = int(state["step"])
        self.best_accuracy = float(state["best_accuracy"])
        self.best_step = int(state["best_step"])
        if self.best_step == 0 and self.optimizer is not None:
            # an older sact's best could be the untrained model: none of the trained steps yet
            self.best_accuracy = -1.0
        self.last_accuracy = (
            math.nan if checkpoint.val_accuracy is None else checkpoint.val_accuracy
        )
        if checkpoint.val_accuracy is not None:
            self.validated_at = self.step
            self.last_ci95 = math.nan if checkpoint.val_ci95 is None else checkpoint.val_ci95
        truncate_metrics(self.metrics_path, self.step)
        if self.console is not None:
            self.console.print(f"resuming {self.run_dir} at step {self.step}")

    # -- data --

    def plans(self) -> Iterator[tuple[list[DrawnEpisode], RngState]]:
        """Each step's episodes, frames and views, drawn in order, with the generator state
        after."""
        stored = self.data.feature_set.frames
        while True:
            drawn = []
            for _ in range(self.config.tasks_per_batch):
                episode = self.data.train_sampler.sample(self.rng)
                support_frames = segment_frames(stored, self.frames, len(episode.support), self.rng)
                query_frames = segment_frames(stored, self.frames, len(episode.query), self.rng)
                support_views = self.draw_views(len(episode.support))
                query_views = self.draw_views(len(episode.query))
                drawn.append((episode, support_frames, query_frames, support_views, query_views))
            yield drawn, self.rng.bit_generator.state

    def draw_views(self, count: int) -> np.ndarray | None:
        """A view per video, uniformly among the training views; nothing is drawn with a single
        view (so a store without views trains exactly as before views existed)."""
        views = len(self.data.train_views)
        return None if views == 1 else self.rng.integers(0, views, size=count)

    def load(
        self, plan: tuple[list[DrawnEpisode], RngState]
    ) -> tuple[list[LoadedEpisode], RngState]:
        """An episode's videos on the device, its support labels on the CPU (the model checks
        them there, no device sync), its query labels on the device (a non-blocking copy)."""
        drawn, rng_state = plan
        loaded: list[LoadedEpisode] = []
        for episode, support_frames, query_frames, support_views, query_views in drawn:
            loaded.append(
                (
                    self.train_features.videos(episode.support, support_frames, support_views),
                    torch.from_numpy(episode.support_labels()),
                    self.train_features.videos(episode.query, query_frames, query_views),
                    to_device(episode.query_labels(), self.device),
                )
            )
        return loaded, rng_state

    def batches(self) -> Generator[tuple[list[LoadedEpisode], RngState]]:
        """The remaining steps' batches; closing it stops the reads running ahead."""
        if self.step >= self.iterations:  # a finished run resumed: its split is never read
            return
        plans = itertools.islice(self.plans(), self.iterations - self.step)
        if self.train_features.in_memory:
            yield from map(self.load, plans)
        else:
            prefetcher = Prefetcher(workers=self.config.workers, depth=self.config.prefetch)
            yield from prefetcher.map(self.load, plans)

    # -- steps --

    def train_step(self, episodes: list[LoadedEpisode]) -> tuple[float, float]:
        """One optimiser step on the mean loss of `episodes`: (loss, accuracy) over them."""
        self.begin_step()
        # summed on the device and read once, after the step: no device sync per episode
        totals = self.run_step(self.model, episodes, self.precision, self.scaler)
        return self.take_step(totals)

    def begin_step(self) -> None:
        """Training mode, this step's learning rate, no gradients yet."""
        assert self.optimizer is not None
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)

    def take_step(self, totals: StepTotals) -> tuple[float, float]:
        """The optimiser step on the gradients the step left; (loss, accuracy) of its episodes."""
        assert self.optimizer is not None
        total_loss, correct, count = totals
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss_value, correct_value = torch.stack([total_loss, correct.to(total_loss.dtype)]).tolist()
        return loss_value, correct_value / count

    def after_step(self, loss: float, accuracy: float, rng_state: RngState) -> str:
        """Count the step taken, log it, validate and save on schedule; its status line."""
        self.step += 1
        lr = learning_rate(self.config, self.step)
        self.log({"step": self.step, "loss": loss, "train_accuracy": accuracy, "lr": lr})
        if self.step % self.config.val_every == 0 or self.step == self.iterations:
            self.validate_and_save(rng_state)
        return f"loss {loss:.3f}  val {100 * self.last_accuracy:.1f}%"

    def save_unsaved(self, rng_state: RngState) -> None:
        """Save the last step taken, unless it already is (an interrupted run stops here)."""
        if self.saved_at != self.step:
            self.save(best=False, rng_state=rng_state)

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False, soft_wrap=True)

    def validate(self) -> tuple[float, float]:
        """Val accuracy over the fixed val episodes, ± its 95% CI."""
        (accuracies,) = score_episodes(
            self.model,
            [self.val_features],
            [self.data.val_episodes],
            batch_size=self.config.batch_size,
            autocast=self.autocast,
        )
        return mean_and_interval(accuracies)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as metrics:
            metrics.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.record(record)

    def draw_val_attention(self, model: SACT) -> Path:
        """SA-CT's attention of the first val episode's first query on the first support of its
        class, on the patch grid (stage 2 has no pixels; `sact explain` draws it on the frames)."""
        episode = self.data.val_episodes[0]
        pair = np.array([episode.support[0], episode.query[0]])  # both of the episode's class 0
        frames = segment_frames(self.data.feature_set.frames, self.frames, 2)  # (2, T) centers
        support, query = self.val_features.videos(pair, frames)  # (T, P, D) each
        weights = attention_weights(model, support, query)  # (T', P, P)
        rows, cols = model.grid
        blank = np.full(
            (weights.shape[0], rows * GRID_CELL_PX, cols * GRID_CELL_PX, 3), 128, np.uint8
        )  # (T', H, W, 3)
        ids = [self.data.val_pool.video_ids[p] for p in pair]
        return draw_attention(
            query_frames=blank,
            support_frames=blank,
            weights=weights,
            grid=(rows, cols),
            patches=focused_patches(weights, min(ATTENTION_PATCHES, weights.shape[1])),
            path=self.run_dir / ATTENTION_FILE,
            title=f"step {self.step}: val query {ids[1]} → support {ids[0]} (patch grid)",
        )

    def validate_and_save(self, rng_state: RngState) -> None:
        """Validate, log, and save with the generator state after this step (reads run ahead)."""
        self.last_accuracy, self.last_ci95 = self.validate()
        self.validated_at = self.step
        # step 0 of a model with parameters is the untrained model: kept, never the best
        untrained = self.step == 0 and self.optimizer is not None
        improved = not untrained and self.last_accuracy > self.best_accuracy
        if improved:
            self.best_accuracy, self.best_step = self.last_accuracy, self.step
        extra = {} if self.on_validation is None else self.on_validation(self.model)
        self.log({"step": self.step, "val_accuracy": self.last_accuracy, **extra})
        if self.tensorboard is not None and isinstance(self.model, SACT):
            self.tensorboard.figure(
                "figures/attention", self.draw_val_attention(self.model), self.step
            )
        self.save(best=improved, untrained=untrained, rng_state=rng_state)
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def load_features(self) -> None:
        """Read what the run still needs now, before the training progress display starts."""
        if self.step < self.iterations:
            _ = self.train_features, self.val_features
        elif not self.restored:
            _ = self.val_features

    def run(self) -> TrainResult:
        if self.optimizer is None:
            return self.score_once()
        self.load_features()
        status = TextColumn("{task.fields[status]}")
        display = progress_display(self.console, status, label="train", transient=False)
        with display as progress:
            bar = progress.add_task("", total=self.iterations, completed=self.step, status="")
            try:
                with self.interrupt_after_the_step(progress, bar):
                    self.steps(progress, bar)
            except KeyboardInterrupt as interrupt:  # a second Ctrl-C: stopped at once
                self.stop_tensorboard()
                saved = "nothing saved" if self.saved_at is None else f"saved: step {self.saved_at}"
                raise Interrupted(
                    f"stopped at once during step {self.step + 1} of run {self.run_dir} ({saved})",
                    resume_instruction(self.run_dir),
                ) from interrupt
        if self.interrupted and self.step < self.iterations:
            self.stop_tensorboard()
            raise Interrupted(
                f"interrupted: step {self.step} of {self.iterations} saved in "
                f"{self.checkpoints / 'last'}",
                resume_instruction(self.run_dir),
            )
        return self.result()

    def steps(self, progress: Progress, bar: TaskID) -> None:
        """Train to `iterations`, or to the end of the step a Ctrl-C fell in, which is then saved
        (with the generator state after it: reads run ahead)."""
        self.validate_untrained()
        if self.interrupted:
            return
        with closing(self.batches()) as batches:
            for episodes, rng_state in batches:
                status = self.after_step(*self.train_step(episodes), rng_state)
                progress.update(bar, completed=self.step, status=status)
                if self.interrupted:
                    self.save_unsaved(rng_state)
                    return

    def validate_untrained(self) -> None:
        """A new run's first validation, of the untrained model: the curve's first point."""
        if not self.restored:
            self.validate_and_save(self.rng.bit_generator.state)

    def interrupt_after_the_step(self, progress: Progress, bar: TaskID) -> AbstractContextManager:
        """Ctrl-C lets the step under way end, and `steps` saves it and stops: no step is lost."""

        def interrupt() -> None:
            self.interrupted = True
            progress.update(bar, status="Ctrl-C: stopping once this step is done and saved")

        return on_first_interrupt(interrupt)

    def stop_tensorboard(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def score_once(self) -> TrainResult:
        """A model without parameters: validated and saved once, so it can be evaluated."""
        if self.console is not None:
            self.console.print(
                f"{self.config.model} has no trainable parameters: nothing to train; "
                f"scoring it on the {len(self.data.val_episodes)} val episodes once"
            )
        if not self.restored:
            self.load_features()
            self.validate_and_save(self.rng.bit_generator.state)
        return self.result()

    def result(self) -> TrainResult:
        training_curve(self.metrics_path, self.run_dir / CURVE_FILE)
        if self.tensorboard is not None:
            self.tensorboard.figure("figures/training_curve", self.run_dir / CURVE_FILE, self.step)
            self.tensorboard.close()
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            best_step=self.best_step,
            best_val_accuracy=self.best_accuracy,
            last_val_accuracy=self.last_accuracy,
            data=(
                self.train_features.where()
                if "train_features" in self.__dict__
                else "train features not read (nothing left to train)"
            ),
            parameters=sum(parameter.numel() for parameter in self.parameters),
        )
