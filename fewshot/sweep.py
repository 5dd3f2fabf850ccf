"""`sact sweep`: every variant × training seed on one store, scored on identical test episodes.

    plan the runs (OUT/runs/<variant>-seed<k>/) ─▶ refuse a run folder trained otherwise
        ─▶ draw the test episodes once (OUT/test-episodes.json: every shot setting, --seed)
        ─▶ print the cost: runs, steps, episodes, and an estimate from a timed warm-up (side by
           side, each variant's seeds warm up in one stacked step, as they will train)
        ─▶ each run: `sact train`'s `train`, then `sact evaluate`'s `evaluate` on the episode file
        ─▶ `sact report`'s table (and a recipe's published numbers beside it): printed, and
           written as OUT/report.md and OUT/report.json

Resume: the same command again keeps what is done. A run whose last checkpoint holds its final step
is trained, and one with a record of its evaluated checkpoint (same weights) on the sweep's
episodes is evaluated (fewshot/records.py); both are told from small JSON files and the weights,
without reading features. A half-trained run resumes from its last checkpoint (`sact train
--resume`: bitwise on the CPU). A run folder whose saved config differs from the run the sweep
asks is refused in one line naming the field, never reused.

On one device the runs of a process share the features they read: the train and val splits are
loaded once (fewshot/features.py, `features_shared`), not once per run, and so is the test split,
kept in host memory for each run's model to embed (fewshot/evaluation.py, `score`). With
`--side-by-side on` each variant's seeds also train side by side in one process, one stacked step
for all of them (fewshot/side_by_side.py); `auto` does where that was measured faster
(docs/SWEEP.md, "Side by side"). Ctrl-C saves the step under way and says to run the same sweep
again (not `sact train --resume`).

Several processes: each run is claimed before it is trained (common/claims.py, in OUT/.claims/),
so processes sharing OUT never train the same run. Under torchrun (`torchrun --nproc-per-node G
$(which sact) sweep ...`) every rank works through the runs in order, claiming those nobody holds,
on its own GPU (LOCAL_RANK); rank 0 draws the episodes first and reports once every rank is done.
A rank that dies leaves its claimed runs to the next sweep (a dead process's claim is free at
once on its host, on another host once its heartbeat is stale: common/claims.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
import zarr.storage
from rich.console import Console
from rich.table import Table

from sact.common.claims import ClaimBook
from sact.common.devices import autocast_for, resolve_device, synchronize
from sact.common.distributed import Job, device_for, joined, rank_from_env
from sact.common.errors import Interrupted, SactError
from sact.common.files import write_text_atomic
from sact.common.options import Checked, checked, option_name
from sact.fewshot.checkpoints import CheckpointError, read_checkpoint
from sact.fewshot.config import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    RUNTIME_FIELDS,
    EvalConfig,
    TrainConfig,
    read_train_config,
)
from sact.fewshot.episodes import build_pool, resolve_split, setting_digest
from sact.fewshot.evaluation import evaluate, make_episodes
from sact.fewshot.features import features_shared
from sact.fewshot.precision import resolve_precision
from sact.fewshot.records import run_records, weights_digest
from sact.fewshot.report import Report, build_report, report_json, report_markdown, report_table
from sact.fewshot.selection import select_checkpoint
from sact.fewshot.side_by_side import (
    StackedStep,
    draws_random_numbers,
    side_by_side_on,
    train_side_by_side,
)
from sact.fewshot.sweep_config import (
    Published,
    Recipe,
    SweepConfig,
    SweepError,
    Variant,
    read_recipe,
)
from sact.fewshot.training import (
    loss_scaler,
    make_optimizer,
    new_model,
    store_location,
    train,
)
from sact.store.backends import FeatureSet, open_feature_set

RUNS_FOLDER = "runs"
EPISODES_FILE = "test-episodes.json"
SWEEP_FILE = "sweep.json"  # the resolved config
REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"
CLAIMS_FOLDER = ".claims"  # a zarr group holding the runs' claims
CLAIMS_SCOPE = "runs"
PREPARED = "prepared"  # the barrier after rank 0 drew the episodes
# the timed warm-up: one untimed step (allocation, kernel choice), then these
WARMUP_STEPS = 3
# what continues a sweep stopped by Ctrl-C: the sweep resumes the run itself, with the others
SWEEP_AGAIN = "run the same sact sweep command again to continue"


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: its variant and seed, its folder, how it trains and is scored."""

    variant: Variant
    seed: int
    folder: Path
    train: TrainConfig
    evaluation: EvalConfig

    @property
    def name(self) -> str:
        return self.folder.name


def plan(config: SweepConfig) -> list[SweepRun]:
    out = Path(config.out)
    episodes = out / EPISODES_FILE
    runs = []
    for variant, seed in config.runs():
        folder = out / RUNS_FOLDER / f"{variant.name}-seed{seed}"
        runs.append(
            SweepRun(
                variant,
                seed,
                folder,
                config.run_config(variant, seed, folder),
                config.eval_config(folder, episodes),
            )
        )
    return runs


# ---- what is done, read from small files -------------------------------------------------------


def refuse_a_different_run(run: SweepRun) -> None:
    """A run folder the sweep would reuse must hold the run it asks for: every setting but where
    and how it runs (RUNTIME_FIELDS) equal, the store compared as `sact train` saves it."""
    if not (run.folder / CONFIG_FILE).exists():
        return
    saved = read_train_config(run.folder / CONFIG_FILE)
    for config_field in fields(TrainConfig):
        name = config_field.name
        if name in RUNTIME_FIELDS or name == "out":
            continue
        asked, had = getattr(run.train, name), getattr(saved, name)
        if name == "feats":
            asked = store_location(asked)
        if name == "precision":  # saved resolved for the device it trained on
            asked = resolve_precision(asked, resolve_device(run.train.device)).name
        if name == "views" and asked == "all":
            continue  # saved resolved to the views the store held; "all" asks for those
        if asked != had:
            flag = option_name(TrainConfig, name) if name != "iterations" else "--steps"
            raise SweepError(
                f"{run.folder} holds a run trained with {flag} {had!r}, this sweep asks "
                f"{asked!r}: move it away or give the sweep another --out"
            )


def trained(run: SweepRun) -> bool:
    """Its last checkpoint holds its final step (a model with nothing to train: any checkpoint)."""
    marker = run.folder / LAST_CHECKPOINT
    if not marker.parent.exists() and not marker.parent.with_name("last.previous").exists():
        return False
    try:
        step = read_checkpoint(marker.parent).step
    except CheckpointError:
        return False
    return step >= run.train.iterations or not run.variant.trains


def evaluated(run: SweepRun, digests: Sequence[str]) -> bool:
    """A record of its evaluated checkpoint, with these weights, on every one of `digests`."""
    try:
        checkpoint = select_checkpoint(run.folder, run.evaluation.checkpoint).checkpoint
        weights = weights_digest(checkpoint)
    except (SactError, OSError):  # nothing to score yet
        return False
    for record in run_records(run.folder):
        scored = {setting.episodes_digest for setting in record.settings}
        if record.data.get("weights") == weights and set(digests) <= scored:
            return True
    return False


def file_digests(path: Path) -> list[str]:
    """The episode digests of each setting of the sweep's episode file (written by rank 0)."""
    return [setting_digest(setting) for setting in json.loads(path.read_text())["settings"]]


# ---- the episodes -------------------------------------------------------------------------------


def unlike_the_recipe(recipe: Recipe, feature_set: FeatureSet) -> str | None:
    """How the store's features differ from the recipe's extraction, if they do: its published
    numbers are then further still from this sweep's."""
    stored = {"backbone": feature_set.attrs.get("backbone"), "frames": feature_set.frames}
    differ = [
        f"{name} {value} (the recipe's: {recipe.extract[name]})"
        for name, value in stored.items()
        if name in recipe.extract and value != recipe.extract[name]
    ]
    if not differ:
        return None
    return (
        f"feature set {feature_set.name} has " + ", ".join(differ) + f"; {recipe.extract_command()}"
    )


def draw_episodes(config: SweepConfig, path: Path, console: Console | None) -> None:
    """The sweep's test episodes, drawn once into `path` with `sact evaluate`'s own sampler; an
    existing file must hold what the sweep asks (way, shots, query, count and seed)."""
    asked = config.eval_config(Path(config.out), path)
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        held = [(s["way"], s["shot"], s["query"], len(s["episodes"])) for s in data["settings"]]
        wanted = [(asked.way, shot, asked.query, asked.episodes) for shot in asked.shots]
        if held != wanted or data.get("seed") != asked.seed:
            raise SweepError(
                f"{path} holds other episodes (way, shot, query, count: {held}, seed "
                f"{data.get('seed')}) than this sweep asks ({wanted}, seed {asked.seed}): give "
                "the sweep another --out"
            )
        return
    feature_set = open_feature_set(config.feats, config.feature_set)
    pool = build_pool(feature_set, resolve_split(feature_set, config.split), asked.split)
    make_episodes(asked, pool, console)


# ---- the cost, before the work ------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    runs: int
    to_train: int
    to_evaluate: int
    steps: int  # optimiser steps still to take, over every run
    val_episodes: int  # validation episodes still to score
    test_episodes: int  # test episodes still to score
    seconds: float  # the estimate
    side_by_side: bool  # some variant's runs warmed up and estimated side by side, as they train

    def table(self, device: torch.device) -> Table:
        how = " (side by side)" if self.side_by_side else ""
        table = Table(title=f"sact sweep: the work left, and its estimate on {device}{how}")
        for column in ("runs", "to train", "to evaluate", "steps", "val episodes",
                       "test episodes", "estimate"):  # fmt: skip
            table.add_column(column, justify="right")
        hours, rest = divmod(round(self.seconds), 3600)
        estimate = (
            f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
        )
        table.add_row(
            str(self.runs),
            str(self.to_train),
            str(self.to_evaluate),
            f"{self.steps:,}",
            f"{self.val_episodes:,}",
            f"{self.test_episodes:,}",
            estimate,
        )
        return table


def timed_warmup(
    run: SweepRun, feature_set: FeatureSet, device: torch.device, *, side_by_side: int = 1
) -> tuple[float, float, bool]:
    """(seconds of one run's training step, seconds per scored episode, whether the step was
    stacked) of the run's model on `device`, from WARMUP_STEPS steps on random features of the
    store's shape. Throwaway models and generator: nothing of the sweep's own random state is
    drawn. With `side_by_side` runs (more than one) of a model that stacks (it trains and draws
    no random numbers, fewshot/side_by_side.py), the step timed is their stacked step over that
    many models, as they will train, and one run's share is its seconds over them. Scoring an
    episode is timed as a whole forward; evaluation embeds each video once, so that is an upper
    bound for it."""
    config = run.train
    frames = config.frames or feature_set.frames
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = new_model(config, feature_set, frames).to(device)
        parameters = [p for p in model.parameters() if p.requires_grad]
        stacked = side_by_side > 1 and bool(parameters) and not draws_random_numbers(model)
        models = [model] + [new_model(config, feature_set, frames).to(device)
                            for _ in range(side_by_side - 1 if stacked else 0)]  # fmt: skip
        optimizers = [
            make_optimizer(config, [p for p in one.parameters() if p.requires_grad])
            for one in models
        ] if parameters else []  # fmt: skip
        optimizer = optimizers[0] if optimizers else None
        autocast, _ = autocast_for(device)
        generator = torch.Generator().manual_seed(0)
        patches = int(np.prod(feature_set.grid))

        def videos(count: int) -> torch.Tensor:
            shape = (count, frames, patches, feature_set.dim)  # (n, T, P, D)
            return torch.randn(shape, generator=generator).to(device)

        way = config.way
        support, query = videos(way * config.shot), videos(way * config.query)
        support_labels = torch.arange(way).repeat_interleave(config.shot)
        query_labels = torch.arange(way).repeat_interleave(config.query).to(device)

        def step() -> None:
            if optimizer is None:
                return
            optimizer.zero_grad(set_to_none=True)
            for _ in range(config.tasks_per_batch):
                with autocast:
                    logits = model(support, support_labels, query)  # (N*Q, N)
                F.cross_entropy(logits.float(), query_labels).backward()
            optimizer.step()

        precision = resolve_precision(config.precision, device)
        scalers = [loss_scaler(device, precision.autocast_dtype) for _ in models]
        episode = (support, support_labels, query, query_labels)
        stacked_step = StackedStep(model) if stacked else None

        def side_by_side_step() -> None:
            assert stacked_step is not None
            for one in optimizers:
                one.zero_grad(set_to_none=True)
            stacked_step(models, [[episode] * config.tasks_per_batch] * len(models), precision,
                         scalers)  # fmt: skip
            for one in optimizers:
                one.step()

        def score() -> None:
            with torch.inference_mode(), autocast:
                model(support, support_labels, query)

        seconds = []
        for work in (side_by_side_step if stacked else step, score):
            work()
            synchronize(device)
            started = time.perf_counter()
            for _ in range(WARMUP_STEPS):
                work()
            synchronize(device)
            seconds.append((time.perf_counter() - started) / WARMUP_STEPS)
    return seconds[0] / len(models), seconds[1], stacked


def cost(
    runs: Sequence[SweepRun],
    digests: Sequence[str],
    feature_set: FeatureSet,
    device: torch.device,
    *,
    side_by_side: bool = False,
) -> Cost:
    """What is left to do, and how long it should take here (one warm-up per variant, of its
    runs left to train side by side when `side_by_side`, as they will train)."""
    steps = val = test = to_train = to_evaluate = 0
    seconds = 0.0
    timings: dict[str, tuple[float, float, bool]] = {}
    untrained = [run.variant.name for run in runs if not trained(run)]
    together = Counter(untrained if side_by_side else [])
    for run in runs:
        done_training, done_scoring = trained(run), evaluated(run, digests)
        if done_training and done_scoring:
            continue
        name = run.variant.name
        if name not in timings:
            timings[name] = timed_warmup(run, feature_set, device, side_by_side=together[name])
        per_step, per_episode, _ = timings[name]
        if not done_training:
            to_train += 1
            last = run.folder / LAST_CHECKPOINT
            start = read_checkpoint(last.parent).step if last.exists() else 0
            left = run.train.iterations - start if run.variant.trains else 0
            validations = -(-left // run.train.val_every) + (start == 0)
            steps += left
            val += validations * run.train.val_episodes
            seconds += left * per_step + validations * run.train.val_episodes * per_episode
        if not done_scoring:
            to_evaluate += 1
            episodes = run.evaluation.episodes * len(run.evaluation.shots)
            test += episodes
            seconds += episodes * per_episode
    stacked = any(timing[2] for timing in timings.values())
    return Cost(len(runs), to_train, to_evaluate, steps, val, test, seconds, stacked)


# ---- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    report: Report  # `sact report`'s numbers, rows in the sweep's variant order
    data: dict[str, Any]  # what report.json holds
    tables: list[Table]
    markdown: Path
    json_path: Path


def published_rows(recipe: Recipe, shots: Sequence[int]) -> list[list[str]]:
    def cell(entry: Published, shot: int) -> str:
        value = entry.shots.get(shot)
        return "not reported" if value is None else f"{value:.1f}"

    return [[entry.method, *(cell(entry, shot) for shot in shots), entry.source]
            for entry in recipe.published]  # fmt: skip


def published_table(recipe: Recipe, report: Report, labels: list[str]) -> Table:
    """The recipe's published numbers beside this sweep's (not like for like: the papers
    fine-tune their backbone, a sweep trains a head on frozen features)."""
    shots = [s.shot for s in report.settings]
    table = Table(title=f"{recipe.title}: published (%) and this sweep's (% ± 95% CI)")
    table.add_column("method")
    for shot in shots:
        table.add_column(f"{report.settings[0].way}-way {shot}-shot", justify="right")
    table.add_column("source")
    for row in published_rows(recipe, shots):
        table.add_row(*row)
    for label, measured in zip(labels, report.rows, strict=True):
        scores = [f"{100 * s.accuracy:.1f} ± {100 * s.ci95:.1f}" for s in measured.scores]
        seeds = len(measured.seeds)
        table.add_row(label, *scores, f"this sweep, {seeds} seed(s), frozen features")
    return table


def table_markdown(table: Table) -> str:
    columns = [str(column.header) for column in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    rows = zip(*(column.cells for column in table.columns), strict=True)
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(config: SweepConfig, runs: Sequence[SweepRun]) -> SweepResult:
    """`sact report` over the runs in the sweep's order (the first variant is the reference),
    with the recipe's published numbers beside it; written as report.md and report.json."""
    out = Path(config.out)
    built = build_report([run.folder for run in runs])
    data = report_json(built)
    by_folder = {run.folder.resolve(): run.variant.label for run in runs}
    labels = [by_folder[Path(row.runs[0])] for row in built.rows]
    tables = [report_table(built, title="sact sweep")]
    markdown = report_markdown(built)
    result: dict[str, Any] = {"config": config.to_json(), "report": data, "variants": labels}
    if config.recipe is not None:
        recipe = read_recipe(config.recipe)
        tables.append(published_table(recipe, built, labels))
        markdown += "\n" + table_markdown(tables[-1])
        result["published"] = {
            "recipe": recipe.name,
            "methods": [
                {"method": p.method, "accuracy": {str(k): v for k, v in p.shots.items()},
                 "source": p.source}
                for p in recipe.published
            ],
        }  # fmt: skip
    markdown_path, json_path = out / REPORT_MARKDOWN, out / REPORT_JSON
    write_text_atomic(markdown_path, markdown)
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    return SweepResult(built, result, tables, markdown_path, json_path)


def prepare(config: SweepConfig, job: Job, console: Console | None) -> None:
    """Rank 0 (or the only process): the sweep's folder, its config, episodes and claims group;
    the other ranks wait for its verdict and fail with it."""
    out = Path(config.out)
    if job.rank.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / SWEEP_FILE, json.dumps(config.to_json(), indent=2) + "\n")
            draw_episodes(config, out / EPISODES_FILE, console)
            zarr.open_group(zarr.storage.LocalStore(out / CLAIMS_FOLDER), mode="a")
        except BaseException:
            job.setup_failed(True)
            raise
    if job.setup_failed(False):  # rank 0 tells the others it is done
        raise SweepError("rank 0 could not prepare the sweep; its error is in its log")


def groups(runs: Sequence[SweepRun], side_by_side: bool) -> list[list[SweepRun]]:
    """The runs in the order they are made: side by side, each variant's seeds together (they
    share one architecture); otherwise one by one."""
    if not side_by_side:
        return [[run] for run in runs]
    by_variant: dict[str, list[SweepRun]] = {}
    for run in runs:
        by_variant.setdefault(run.variant.name, []).append(run)
    return list(by_variant.values())


def run_group(group: Sequence[SweepRun], digests: Sequence[str], console: Console | None) -> None:
    """Train (or resume) the runs, side by side when there are several, then score each on the
    sweep's episodes, each unless done."""
    to_train = [
        replace(run.train, resume=(run.folder / CONFIG_FILE).exists())
        for run in group
        if not trained(run)
    ]
    try:
        if len(to_train) > 1:
            train_side_by_side(to_train, console)
        elif to_train:
            train(to_train[0], console=console)
    except Interrupted as interrupted:  # its instruction is `sact train --resume`'s
        raise Interrupted(interrupted.what, SWEEP_AGAIN) from interrupted
    for run in group:
        if not evaluated(run, digests):
            evaluate(checked(run.evaluation), console=console)


def run_sweep(
    config: SweepConfig | Checked[SweepConfig], console: Console | None = None
) -> SweepResult | None:
    """Every run of the sweep trained and scored (what another process holds is left to it), and
    the report; None on a torchrun rank other than 0, which reports nothing."""
    config = checked(config).config
    rank = rank_from_env()
    device = device_for(rank, resolve_device(config.device))
    config = replace(config, device=str(device))
    runs = plan(config)
    for run in runs:
        refuse_a_different_run(run)
    out = Path(config.out)
    side_by_side = side_by_side_on(config.side_by_side, device)
    with joined(rank, device=device) as job:
        prepare(config, job, console)
        digests = file_digests(out / EPISODES_FILE)
        if rank.is_main and console is not None:
            feature_set = open_feature_set(config.feats, config.feature_set)
            if config.recipe is not None:
                note = unlike_the_recipe(read_recipe(config.recipe), feature_set)
                if note:
                    console.print(f"[yellow]note:[/] {note}", highlight=False)
            work = cost(runs, digests, feature_set, device, side_by_side=side_by_side)
            console.print(work.table(device))
        claims = ClaimBook(
            zarr.open_group(zarr.storage.LocalStore(out / CLAIMS_FOLDER), mode="a"), CLAIMS_SCOPE
        )
        with claims.keep_alive(), features_shared():
            for group in groups(runs, side_by_side):
                unfinished = [
                    run for run in group if not (trained(run) and evaluated(run, digests))
                ]
                mine = [run for run in unfinished if claims.try_claim(run.name)]
                if not mine:
                    continue
                try:
                    if console is not None:
                        where = f" (rank {rank.rank})" if rank.distributed else ""
                        numbers = ", ".join(str(runs.index(run) + 1) for run in mine)
                        names = ", ".join(run.name for run in mine)
                        plural = "s" if len(mine) > 1 else ""
                        console.rule(f"[bold]run{plural} {numbers}/{len(runs)}: {names}{where}")
                    run_group(mine, digests, console)
                finally:
                    for run in mine:
                        claims.release(run.name)
        job.wait_for_all()
    if not rank.is_main:
        return None
    left = [run.name for run in runs if not (trained(run) and evaluated(run, digests))]
    if left:
        raise SweepError(
            f"{len(left)} run(s) are held by another sweep on {out} ({', '.join(left[:3])}); "
            "run the same command again once it ends, for the report"
        )
    return report(config, runs)
