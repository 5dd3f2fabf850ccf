"""`sact evaluate`: score a run, and the runs it is compared with, on the same test episodes.

`evaluate(EvalConfig(...))` resolves the run's checkpoint and store, draws (or reads) the episodes,
scores every run with the scoring library (fewshot/accuracy.py), writes the results JSON and
`results_table` prints them. The protocol (README.md, "Stage 2"): N-way K-shot episodes with Q
queries per class from the test split, 10,000 per shot setting by default, accuracy ± the 95%
confidence interval 1.96·std/√n over the episodes' accuracies. Episodes are a pure function of
(split videos, N, K, Q, seed) and can be written to and read from a file, so several runs
(`compare`) are scored on identical episodes and their difference is reported as a paired one,
with its own confidence interval.

Every evaluation is kept: each run scored gets a record in its own `evaluations/` folder, keyed by
its checkpoint and the episodes (fewshot/records.py), holding every episode's result, which
`sact report` reads. A run is scored in its `best` checkpoint by default, the best validated
trained step, never the untrained model unless asked for by name (the rule: fewshot/selection.py);
the checkpoint and its step head the run's column of the table and are in the JSON, and a warning
goes with one that may be no better than the untrained model. `--out` also writes this
evaluation's results (all runs, paired differences) to one file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sact.common.devices import resolve_device
from sact.common.files import write_text_atomic
from sact.common.options import Checked, checked
from sact.fewshot.accuracy import mean_and_interval, score_episodes
from sact.fewshot.checkpoints import Checkpoint, check_compatible, run_dir_of
from sact.fewshot.config import LEGACY_PRECISION, EvalConfig, EvaluationError, latest_run
from sact.fewshot.episodes import (
    Episode,
    EpisodeError,
    EpisodeSampler,
    EpisodeSet,
    VideoPool,
    build_pool,
    episodes_digest,
    load_episodes,
    resolve_split,
    save_episodes,
)
from sact.fewshot.features import sharing_features, split_features
from sact.fewshot.precision import resolve_precision, resolved_name
from sact.fewshot.records import record_name, weights_digest, write_record
from sact.fewshot.selection import Selected, select_checkpoint, select_folder
from sact.store.backends import FeatureSet, open_feature_set
from sact.store.feature_set import CANONICAL


@dataclass(frozen=True)
class Accuracy:
    """A run's mean accuracy over a setting's episodes ± the half-width of its 95% CI."""

    accuracy: float
    ci95: float

    def cell(self) -> str:
        return f"{100 * self.accuracy:.2f} ± {100 * self.ci95:.2f}"


@dataclass(frozen=True)
class ViewsAccuracy(Accuracy):
    """The accuracy with each episode's logits averaged over `views` (test-time augmentation)."""

    views: tuple[str, ...]


@dataclass(frozen=True)
class PairedDifference:
    """The first run's accuracy minus another's, episode by episode, ± its own 95% CI."""

    difference: float
    ci95: float

    def cell(self) -> str:
        return f"{100 * self.difference:+.2f} ± {100 * self.ci95:.2f}"


@dataclass(frozen=True)
class SettingResult:
    """Every run on one N-way K-shot Q-query set of episodes."""

    way: int
    shot: int
    query: int
    episodes: int
    runs: dict[str, Accuracy]
    paired_differences: dict[str, PairedDifference]  # the first run against each other one
    tta: dict[str, ViewsAccuracy] | None  # with --tta

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.tta is None:
            del data["tta"]
        return data


@dataclass(frozen=True)
class EvaluatedRun:
    """What was scored of a run: its checkpoint (and why: fewshot/selection.py) and the store
    and pool it was read from."""

    model: str
    checkpoint: str
    checkpoint_name: str
    step: int
    val_accuracy: float | None
    warning: str | None
    feature_set: str
    store: str
    videos: int
    classes: int


@dataclass(frozen=True)
class Evaluation:
    """`evaluate`'s results: the runs (the first is the one evaluated, then `compare`), their
    accuracies per setting, and where each run's record of it was kept."""

    config: EvalConfig
    precision: str  # the policy's name as resolved on the device (fewshot/precision.py)
    created: str
    split: str
    settings: list[SettingResult]
    warnings: list[str]  # a checkpoint that may be no better than the untrained model
    runs: dict[str, EvaluatedRun]
    records: dict[str, str]  # each run's record (fewshot/records.py)
    path: str  # --out, else the first run's record

    def to_json(self) -> dict[str, Any]:
        """What --out holds."""
        return {
            "config": asdict(self.config),
            "precision": self.precision,
            "created": self.created,
            "split": self.split,
            "settings": [setting.to_json() for setting in self.settings],
            "warnings": self.warnings,
            "runs": {name: asdict(run) for name, run in self.runs.items()},
            "records": self.records,
        }


@dataclass
class Scored:
    """One model on one store: what it needs to score episodes given by video id."""

    name: str
    selected: Selected  # the checkpoint, and why it was scored (fewshot/selection.py)
    feature_set: FeatureSet
    pool: VideoPool
    split_note: str | None = None  # SplitSource.note

    @property
    def checkpoint(self) -> Checkpoint:
        return self.selected.checkpoint


def open_scored(name: str, selected: Selected, config: EvalConfig, *, override: bool) -> Scored:
    """The checkpoint with its store (or --feats/--feature-set when `override`) and split pool."""
    checkpoint = selected.checkpoint
    feats = (config.feats if override else None) or checkpoint.store
    name_in_store = (config.feature_set if override else None) or checkpoint.feature_set
    feature_set = open_feature_set(feats, name_in_store)
    check_compatible(checkpoint, feature_set)
    split_list = (config.split_list if override else None) or checkpoint.split
    source = resolve_split(feature_set, split_list)
    pool = build_pool(feature_set, source, config.split)
    return Scored(name, selected, feature_set, pool, split_note=source.note)


def translate(
    episodes: list[Episode], source: VideoPool, target: VideoPool, *, run: str
) -> list[Episode]:
    """The same episodes (same video ids) as positions of `run`'s pool of the same split."""
    class_of = {name: number for number, name in enumerate(target.classes)}
    advice = "compare runs on stores holding the same videos"

    def moved(positions: np.ndarray) -> np.ndarray:
        try:
            return np.array([target.position_of[source.video_ids[p]] for p in positions])
        except KeyError as error:
            raise EvaluationError(
                f"video {error.args[0]!r} of the episodes is not usable in {target.part} of "
                f"{run}'s store; {advice}"
            ) from error

    def moved_classes(numbers: np.ndarray) -> np.ndarray:
        try:
            return np.array([class_of[source.classes[c]] for c in numbers])
        except KeyError as error:
            raise EvaluationError(
                f"class {error.args[0]!r} of the episodes has no usable video in {target.part} of "
                f"{run}'s store; {advice}"
            ) from error

    return [
        Episode(
            classes=moved_classes(episode.classes),
            support=moved(episode.support),
            query=moved(episode.query),
        )
        for episode in episodes
    ]


def make_episodes(config: EvalConfig, pool: VideoPool, console: Console | None) -> list[EpisodeSet]:
    path = Path(config.episodes_file) if config.episodes_file else None
    if path is not None and path.exists():
        settings = load_episodes(path, pool)
        if console is not None:
            console.print(f"episodes from {path} (their way/shot/query settings are used)")
        return settings
    settings = []
    unfinished = pool.unfinished()
    if unfinished is not None and console is not None:
        console.print(f"[yellow]warning:[/] {unfinished}; scoring the videos done so far")
    for shot in config.shots:
        try:
            sampler = EpisodeSampler(pool, way=config.way, shot=shot, queries=config.query)
        except EpisodeError as error:
            if unfinished is None:
                raise
            raise EvaluationError(unfinished) from error  # the cause, not its consequence
        if console is not None and sampler.exclusion_note():
            console.print(sampler.exclusion_note())
        settings.append(
            EpisodeSet(
                config.way, shot, config.query, sampler.episodes(config.episodes, config.seed)
            )
        )
    if path is not None:
        save_episodes(path, pool, settings, split=pool.part, seed=config.seed)
        if console is not None:
            console.print(f"episodes written to {path}")
    return settings


def augmented_views(scored: Scored) -> tuple[str, ...]:
    """Every stored view that holds the whole pool, canonical first (test-time augmentation)."""
    feature_set, pool = scored.feature_set, scored.pool
    views = tuple(
        name
        for name in feature_set.view_names()
        if feature_set.usable_in(name)[pool.store_indices].all()
    )
    if len(views) == 1:
        raise EvaluationError(
            f"--tta: feature set {feature_set.name} holds no augmented view of every "
            f"{pool.part} video; extract some (sact extract ... --random-views 4)"
        )
    return views


def score(
    scored: Scored,
    settings: list[EpisodeSet],
    config: EvalConfig,
    console: Console | None,
    *,
    views: Sequence[str] = (CANONICAL,),
) -> list[np.ndarray]:
    """Per-episode accuracies of one model for each setting, each episode's logits averaged over
    `views` (one: plain scoring; several: test-time augmentation); every video embedded once per
    view."""
    device = resolve_device(config.device)
    autocast = resolve_precision(config.precision, device)
    model = scored.checkpoint.build().to(device)
    # Alone, each video is read once per view to be embedded: nothing to keep. Within a sweep
    # (`features_shared`) every run scores the same videos: they are read once, kept in host
    # memory (off the GPU, which the runs still to train need) and embedded by each run's model.
    cache_gb = None if sharing_features() else 0.0
    per_view = [
        split_features(
            scored.feature_set,
            scored.pool,
            frames=scored.checkpoint.model_config["frames"],
            device=device,
            cache_gb=cache_gb,
            device_tier=False,
            views=(view,),
        )
        for view in views
    ]
    return score_episodes(
        model,
        per_view,
        [setting.episodes for setting in settings],
        batch_size=config.batch_size,
        autocast=autocast,
        workers=config.workers,
        console=console,
    )


def evaluate(
    config: EvalConfig | Checked[EvalConfig], console: Console | None = None
) -> Evaluation:
    """Score a run (and `compare` runs) on the same episodes; results also written as JSON. A
    config the command line checked runs as it is."""
    config = checked(config).config
    if config.ckpt:
        selected = select_folder(Path(config.ckpt))
    else:
        run = Path(config.run) if config.run else latest_run(Path(config.runs_dir))
        selected = select_checkpoint(run, config.checkpoint)
    main = open_scored(str(run_dir_of(selected.checkpoint)), selected, config, override=True)
    others = [
        open_scored(
            str(run), select_checkpoint(Path(run), config.checkpoint), config, override=False
        )
        for run in config.compare
    ]
    warnings = [one.selected.warning for one in (main, *others) if one.selected.warning]
    if console is not None:
        for note in dict.fromkeys(one.split_note for one in (main, *others) if one.split_note):
            console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
        console.print(
            f"{main.name}: {main.selected.label}; {main.feature_set.name}, {main.pool.summary()}",
            highlight=False,
            soft_wrap=True,
        )
        for warning in warnings:  # before the scoring, which can take a while
            console.print(
                f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True
            )
    settings = make_episodes(config, main.pool, console)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    # every run scores the same episodes, by video id in its own pool
    settings_of = {main.name: settings} | {
        other.name: [
            EpisodeSet(
                s.way,
                s.shot,
                s.queries,
                translate(s.episodes, main.pool, other.pool, run=other.name),
            )
            for s in settings
        ]
        for other in others
    }
    every_run = [main, *others]
    accuracies = {one.name: score(one, settings_of[one.name], config, console) for one in every_run}
    over_views: dict[str, tuple[list[np.ndarray], tuple[str, ...]]] = {}
    for one in every_run if config.tta else []:
        views = augmented_views(one)
        over_views[one.name] = (
            score(one, settings_of[one.name], config, console, views=views),
            views,
        )
    results = []
    for number, setting in enumerate(settings):
        paired = {
            other.name: PairedDifference(
                *mean_and_interval(accuracies[main.name][number] - accuracies[other.name][number])
            )
            for other in others
        }
        results.append(
            SettingResult(
                way=setting.way,
                shot=setting.shot,
                query=setting.queries,
                episodes=len(setting.episodes),
                runs={
                    name: Accuracy(*mean_and_interval(per_setting[number]))
                    for name, per_setting in accuracies.items()
                },
                paired_differences=paired,
                tta={
                    name: ViewsAccuracy(*mean_and_interval(per_setting[number]), views=views)
                    for name, (per_setting, views) in over_views.items()
                }
                if over_views
                else None,
            )
        )
    runs = {
        scored.name: EvaluatedRun(
            model=scored.checkpoint.model,
            checkpoint=str(scored.checkpoint.folder),
            checkpoint_name=scored.selected.name,
            step=scored.checkpoint.step,
            val_accuracy=scored.checkpoint.val_accuracy,
            warning=scored.selected.warning,
            feature_set=scored.feature_set.name,
            store=scored.feature_set.location,
            videos=len(scored.pool),
            classes=len(scored.pool.classes),
        )
        for scored in every_run
    }
    digests = [episodes_digest(main.pool, setting) for setting in settings]
    compared = {
        other.name: [result.paired_differences[other.name] for result in results]
        for other in others
    }
    records = {}
    for scored in every_run:
        mine = compared if scored is main else {}
        path = keep(scored, accuracies[scored.name], settings, digests, config, compared=mine)
        records[scored.name] = str(path)
    evaluation = Evaluation(
        config=config,
        precision=resolved_name(config.precision, resolve_device(config.device)),
        created=created,
        split=config.split,
        settings=results,
        warnings=warnings,
        runs=runs,
        records=records,
        path=config.out or records[main.name],
    )
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(evaluation.to_json(), indent=2) + "\n")
    return evaluation


def keep(
    scored: Scored,
    accuracies: list[np.ndarray],
    settings: list[EpisodeSet],
    digests: list[str],
    config: EvalConfig,
    *,
    compared: dict[str, list[PairedDifference]],
) -> Path:
    """The run's record of this evaluation, in its evaluations/ folder (fewshot/records.py)."""
    checkpoint = scored.checkpoint
    weights = weights_digest(checkpoint)
    device = resolve_device(config.device)
    precision = resolved_name(config.precision, device)
    # scored as before policies existed: the record keeps the name it had
    legacy = precision == resolved_name(LEGACY_PRECISION, device)
    data = {
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "run": str(run_dir_of(checkpoint).resolve()),
        "model": checkpoint.model,
        "model_config": checkpoint.model_config,
        "checkpoint": checkpoint.folder.name,
        "step": checkpoint.step,
        "weights": weights,
        "feature_set": scored.feature_set.name,
        "store": scored.feature_set.location,
        "split": config.split,
        "precision": precision,
        "settings": [
            {
                "way": setting.way,
                "shot": setting.shot,
                "query": setting.queries,
                "episodes": len(setting.episodes),
                "episodes_digest": digest,
                "accuracy": mean_and_interval(per_episode)[0],
                "ci95": mean_and_interval(per_episode)[1],
                # each episode's correct queries: its accuracy times its N·Q queries
                "correct": np.rint(per_episode * setting.way * setting.queries)
                .astype(int)
                .tolist(),
            }
            for setting, digest, per_episode in zip(settings, digests, accuracies, strict=True)
        ],
        "compared": {
            name: [asdict(difference) for difference in differences]
            for name, differences in compared.items()
        },
        "config": asdict(config),
    }
    name = record_name(checkpoint, weights, digests, None if legacy else precision)
    return write_record(run_dir_of(checkpoint), name, data)


def results_table(evaluation: Evaluation) -> Table:
    """Accuracy ± 95% CI per run and shot setting; paired differences against the first run."""
    runs = list(evaluation.runs)
    table = Table(title=f"few-shot accuracy on {evaluation.split} (± 95% CI)")
    table.add_column("setting")
    table.add_column("episodes", justify="right")
    for name in runs:
        run = evaluation.runs[name]
        scored = f"{run.checkpoint_name}, step {run.step}"
        table.add_column(f"{run.model} ({Path(name).name})\n{scored}")
    for name in runs[1:]:
        table.add_column(f"Δ vs {Path(name).name}", justify="right")
    for setting in evaluation.settings:
        row = [f"{setting.way}-way {setting.shot}-shot", str(setting.episodes)]
        for name in runs:
            row.append(setting.runs[name].cell())
        for name in runs[1:]:
            row.append(setting.paired_differences[name].cell())
        table.add_row(*row)
        if setting.tta is not None:  # test-time augmentation, apart from the canonical view's row
            views = len(next(iter(setting.tta.values())).views)
            row = [f"  same, logits averaged over {views} views", str(setting.episodes)]
            row += [setting.tta[name].cell() for name in runs]
            table.add_row(*row, *([""] * (len(runs) - 1)))
    return table
