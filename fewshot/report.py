"""`sact report`: one table over many runs, from the evaluations they keep.

Runs are grouped into configurations: runs whose training configs are equal up to the seed (and
where and how they ran) are seeds of one configuration. Every configuration is scored on the
episode sets that all runs were evaluated on (same `episodes_digest`, fewshot/records.py), so the
numbers of a table always come from identical episodes. Per configuration and shot setting:

    accuracy    mean over seeds and episodes ± the 95% CI over episodes of the seed-averaged
                accuracy, 1.96·std/√E
    seeds       the lowest and highest single-seed accuracy (the spread between training seeds)
    Δ           the paired difference to the reference configuration (the first), episode by
                episode on the seed-averaged accuracies, ± its own 95% CI

The settings column names only what differs between the configurations; the checkpoint column
which checkpoint of each run was scored, and at which step. A run's result is its most recent
evaluation of a trained checkpoint (the rule of fewshot/selection.py): a record of its untrained
step-0 model (an older sact's `best-step0-*.json`) is used only when the run has no other on those
episodes, and then the row says "untrained" and the report warns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from sact.common.errors import SactError
from sact.fewshot.accuracy import mean_and_interval
from sact.fewshot.records import Record, SettingScores, run_records
from sact.fewshot.selection import UNTRAINED, is_untrained

CONFIG_FILE = "config.json"
# training-config fields that do not change what a run computes (the step mode: only the order
# of float sums, as the device), or that tell its seeds apart
NOT_A_SETTING = frozenset(
    {
        "out",
        "seed",
        "resume",
        "device",
        "cache_gb",
        "workers",
        "prefetch",
        "feats",
        "batch_size",
        "step",
    }
)


TEXT_COLUMNS = 4  # model, settings, feature set, checkpoint: left-aligned; the numbers right


class ReportError(SactError):
    """Runs that cannot be reported together; the message is one line for the user."""


@dataclass
class Run:
    folder: Path
    model: str
    feature_set: str
    settings: dict[str, Any]  # what defines its configuration
    seed: int
    records: list[Record]

    def scored(self, digest: str) -> tuple[Record, SettingScores] | None:
        """Its most recent result on the episodes `digest` of a trained checkpoint, else of the
        untrained one, if any; with its record."""
        found = [
            (record, setting)
            for record in reversed(self.records)
            for setting in record.settings
            if setting.episodes_digest == digest
        ]
        found.sort(key=lambda pair: untrained_record(pair[0]))  # stable: the most recent first
        return found[0] if found else None

    def scores(self, digest: str) -> SettingScores | None:
        scored = self.scored(digest)
        return None if scored is None else scored[1]


def untrained_record(record: Record) -> bool:
    """Whether a record scored a model that was never trained (step 0 of a model with
    parameters)."""
    data = record.data
    model_config = dict(data.get("model_config") or {})
    return is_untrained(str(data.get("model")), model_config, int(data.get("step", -1)))


def checkpoint_label(record: Record) -> str:
    """As `best, step 400`; `untrained, step 0` for an untrained model, whatever its folder."""
    name = UNTRAINED if untrained_record(record) else str(record.data.get("checkpoint"))
    return f"{name}, step {record.data.get('step')}"


@dataclass
class Configuration:
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def feature_set(self) -> str:
        return self.runs[0].feature_set


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories: each path is one, or a folder searched for them (in name order)."""
    found: list[Path] = []
    for path in paths:
        if (path / CONFIG_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(
                config.parent
                for config in sorted(path.rglob(CONFIG_FILE))
                if (config.parent / "checkpoints").is_dir()
            )
        else:
            raise ReportError(f"{path} is neither a run directory nor a folder of runs")
    if not found:
        raise ReportError(f"no runs (folders with {CONFIG_FILE}) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(path.resolve() for path in found))


def read_run(folder: Path) -> Run:
    try:
        description = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        train = description["train"]
        settings = {k: v for k, v in train.items() if k not in NOT_A_SETTING}
        settings["model_config"] = description["model_config"]
        settings["feature_set"] = description["feature_set"]
        run = Run(
            folder=folder,
            model=str(description["model"]),
            feature_set=str(description["feature_set"]),
            settings=settings,
            seed=int(train["seed"]),
            records=run_records(folder),
        )
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read the run in {folder}: {error}") from error
    if not run.records:
        raise ReportError(f"{folder} has no evaluation; run `sact evaluate --run {folder}` first")
    return run


def group(runs: Sequence[Run]) -> list[Configuration]:
    """Runs with the same settings are seeds of one configuration (in order of appearance)."""
    configurations: dict[str, Configuration] = {}
    for run in runs:
        key = json.dumps(run.settings, sort_keys=True)
        configurations.setdefault(key, Configuration(run.settings)).runs.append(run)
    return list(configurations.values())


def shared_settings(runs: Sequence[Run]) -> list[SettingScores]:
    """The episode sets every run was evaluated on, by (way, shot, query)."""
    digests = None
    first: dict[str, SettingScores] = {}
    for run in runs:
        mine = {s.episodes_digest: s for record in run.records for s in record.settings}
        first = first or mine
        digests = set(mine) if digests is None else digests & set(mine)
    if not digests:
        raise ReportError(
            "the runs share no evaluated episodes; evaluate them with the same --episodes-file"
        )
    return sorted((first[d] for d in digests), key=lambda s: (s.way, s.shot, s.query))


def differing(configurations: Sequence[Configuration]) -> list[str]:
    """Setting names whose values are not the same in every configuration. The model, the feature
    set and the model config have columns of their own or follow from the other settings."""
    names = sorted(
        {name for c in configurations for name in c.settings}
        - {"model", "feature_set", "model_config"}
    )
    return [
        name
        for name in names
        if len({json.dumps(c.settings.get(name), sort_keys=True) for c in configurations}) > 1
    ]


def labels(configurations: Sequence[Configuration], names: Sequence[str]) -> list[str]:
    """Each configuration's differing settings, as far as they set it apart: a value most
    configurations share is left out (unless no value is more common than another)."""
    shown: list[list[str]] = [[] for _ in configurations]
    for name in names:
        values = [json.dumps(c.settings.get(name), sort_keys=True) for c in configurations]
        counts = {value: values.count(value) for value in values}
        tie = len(set(counts.values())) == 1
        for number, value in enumerate(values):
            if tie or counts[value] < max(counts.values()):
                shown[number].append(f"{name}={configurations[number].settings.get(name)}")
    return [" ".join(parts) for parts in shown]


def seed_matrix(configuration: Configuration, setting: SettingScores) -> np.ndarray:
    """(seeds, E) per-episode accuracies of a configuration's runs on `setting`'s episodes."""
    rows = []
    for run in configuration.runs:
        scores = run.scores(setting.episodes_digest)
        if scores is None:  # shared_settings guarantees it; a guard for readers of this function
            raise ReportError(f"{run.folder} has no result on episodes {setting.episodes_digest}")
        rows.append(scores.accuracies)
    return np.stack(rows)


@dataclass(frozen=True)
class RowScore:
    """A configuration on one shot setting: accuracy ± CI, each seed's, and Δ to the reference."""

    way: int
    shot: int
    accuracy: float
    ci95: float
    seed_accuracies: list[float]
    difference: float
    difference_ci95: float

    def cells(self, *, reference: bool) -> list[str]:
        """accuracy ± CI, seed range, Δ ± CI (none for the reference itself)."""
        seeds = self.seed_accuracies
        spread = f"{_points(min(seeds))}–{_points(max(seeds))}" if len(seeds) > 1 else ""
        difference = f"{100 * self.difference:+.1f} ± {_points(self.difference_ci95)}"
        return [
            f"{_points(self.accuracy)} ± {_points(self.ci95)}",
            spread,
            "" if reference else difference,
        ]


@dataclass(frozen=True)
class ReportRow:
    """One configuration of a report: its runs (seeds), the checkpoints scored, and a score per
    shot setting."""

    model: str
    feature_set: str
    settings: dict[str, Any]  # the differing settings' values
    label: str
    seeds: list[int]
    runs: list[str]
    checkpoints: dict[str, list[str]]  # by run: "best, step 400", ...
    scores: list[RowScore]

    def checkpoints_cell(self) -> str:
        """The checkpoints it scored: "best, step 400", or one per seed joined by "; "."""
        return "; ".join(dict.fromkeys(c for run in self.checkpoints.values() for c in run))


@dataclass
class Report:
    """Configurations (the first is the reference) and the episode sets they all share."""

    configurations: list[Configuration]
    settings: list[SettingScores]
    differing: list[str]

    def averaged(self, configuration: int, setting: int) -> np.ndarray:
        """(E,) per-episode accuracy of a configuration, averaged over its seeds."""
        return seed_matrix(self.configurations[configuration], self.settings[setting]).mean(0)

    def paired(self, first: int, second: int, setting: int) -> tuple[float, float]:
        """Paired difference first − second on the setting's episodes, ± its 95% CI."""
        return mean_and_interval(self.averaged(first, setting) - self.averaged(second, setting))

    @cached_property
    def rows(self) -> list[ReportRow]:
        """A row per configuration; differences are against the first configuration."""
        rows = []
        names = labels(self.configurations, self.differing)
        for number, configuration in enumerate(self.configurations):
            scores = []
            for index, setting in enumerate(self.settings):
                matrix = seed_matrix(configuration, setting)  # (seeds, E)
                accuracy, interval = mean_and_interval(matrix.mean(axis=0))
                difference, difference_interval = self.paired(number, 0, index)
                scores.append(
                    RowScore(
                        way=setting.way,
                        shot=setting.shot,
                        accuracy=accuracy,
                        ci95=interval,
                        seed_accuracies=matrix.mean(axis=1).tolist(),
                        difference=difference,
                        difference_ci95=difference_interval,
                    )
                )
            rows.append(
                ReportRow(
                    model=configuration.model,
                    feature_set=configuration.feature_set,
                    settings={name: configuration.settings.get(name) for name in self.differing},
                    label=names[number],
                    seeds=[run.seed for run in configuration.runs],
                    runs=[str(run.folder) for run in configuration.runs],
                    checkpoints=scored_checkpoints(configuration, self.settings),
                    scores=scores,
                )
            )
        return rows

    @property
    def warnings(self) -> list[str]:
        """A run scored only as its untrained step-0 model on these episodes."""
        return [
            f"{run} is scored as its untrained step-0 model, the only evaluation it "
            f"has on these episodes: evaluate its trained best (sact evaluate --run {run})"
            for row in self.rows
            for run, checkpoints in row.checkpoints.items()
            if any(c.startswith(f"{UNTRAINED},") for c in checkpoints)
        ]


def build_report(paths: Sequence[Path]) -> Report:
    runs = [read_run(folder) for folder in find_runs(paths)]
    configurations = group(runs)
    return Report(configurations, shared_settings(runs), differing(configurations))


def scored_checkpoints(
    configuration: Configuration, settings: Sequence[SettingScores]
) -> dict[str, list[str]]:
    """Each run's checkpoints scored on the report's episodes, as "best, step 400"."""
    scored = {}
    for run in configuration.runs:
        found = [run.scored(setting.episodes_digest) for setting in settings]
        labels_of_run = [checkpoint_label(pair[0]) for pair in found if pair is not None]
        scored[str(run.folder)] = list(dict.fromkeys(labels_of_run))
    return scored


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data."""
    return {
        "settings": [
            {
                "way": s.way,
                "shot": s.shot,
                "query": s.query,
                "episodes": len(s.correct),
                "episodes_digest": s.episodes_digest,
            }
            for s in report.settings
        ],
        "differing": report.differing,
        "rows": [asdict(row) for row in report.rows],
        "warnings": report.warnings,
    }


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def headers(report: Report) -> list[str]:
    columns = ["model", "settings", "feature set", "checkpoint", "seeds"]
    reference = report.rows[0].model
    for s in report.settings:
        shot = f"{s.way}-way {s.shot}-shot"
        columns += [f"{shot} (%)", "seed range", f"Δ vs {reference}"]
    return columns


def row_cells(rows: Sequence[ReportRow]) -> list[list[str]]:
    return [
        [
            row.model,
            row.label,
            row.feature_set,
            row.checkpoints_cell(),
            str(len(row.seeds)),
            *(cell for score in row.scores for cell in score.cells(reference=number == 0)),
        ]
        for number, row in enumerate(rows)
    ]


def report_table(report: Report, *, title: str = "sact report") -> Table:
    episodes = ", ".join(f"{len(s.correct)} {s.shot}-shot" for s in report.settings)
    table = Table(title=f"{title}: accuracy ± 95% CI on identical episodes ({episodes})")
    for number, column in enumerate(headers(report)):
        table.add_column(column, justify="left" if number < TEXT_COLUMNS else "right")
    for cells_of_row in row_cells(report.rows):
        table.add_row(*cells_of_row)
    return table


def report_markdown(report: Report) -> str:
    columns = headers(report)
    lines = [
        "| " + " | ".join(columns) + " |",
        "| "
        + " | ".join("---" if n < TEXT_COLUMNS else "---:" for n in range(len(columns)))
        + " |",
    ]
    lines += ["| " + " | ".join(cells_of_row) + " |" for cells_of_row in row_cells(report.rows)]
    return "\n".join(lines) + "\n"
