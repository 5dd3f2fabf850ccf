"""What `sact sweep` is asked to do: its config, its variants, sweep files and recipes.

A sweep trains every variant once per training seed on one feature store and scores every run on
the same test episodes (fewshot/sweep.py). Its settings come in layers, each overriding the one
before: the defaults here, a recipe (`--recipe`, data/recipes/*.toml: a published benchmark's
split, extraction, budget and numbers), a sweep file (`--file sweep.toml` or `.json`), and the
options typed on the command line. docs/SWEEP.md documents the file (docs/sweep.schema.json is its
JSON schema). Every run trains with `sact train`'s own config (`training`, a file's `[train]`) and
is scored with `sact evaluate`'s (`evaluation`, a file's `[evaluate]`).

This module imports nothing heavy: the command line checks a sweep before it imports torch.
"""

from __future__ import annotations

import importlib.resources
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from rich.table import Table

from sact.common.errors import SactError
from sact.common.options import declared_options, default_of, option
from sact.fewshot.config import CHECKPOINTS, DEVICE_HELP, EvalConfig, TrainConfig
from sact.fewshot.kinds import is_model, model_kind, model_names, one_of


class SweepError(SactError):
    """A sweep that cannot run as asked; the message is one line for the user."""


@dataclass(frozen=True)
class Variant:
    """One model a sweep trains: a model kind and what its training config changes."""

    name: str  # on the command line, and its runs' folders
    label: str  # in tables
    model: str
    changes: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields

    @property
    def trains(self) -> bool:
        """Whether it has anything to train: a model without parameters gives the same run for
        every seed, so a sweep trains it once."""
        return self.model != "nearest-mean"


# Every model kind is a variant of its own name; SA-CT's ablations and its paper formula
# (docs/MODEL.md) are variants too. SA-CT first: the reference of every paired difference. "sact
# default" is what `SACT(...)` and `sact train` build, "paper formula" what `SACT.paper(...)` does.
VARIANTS = (
    Variant("sact", "SA-CT (sact default)", "sact"),
    Variant("sact-no-tmixer", "SA-CT −TMixer", "sact", (("tmixer", False),)),
    Variant("sact-no-cpe", "SA-CT −CPE", "sact", (("cpe", False),)),
    Variant(
        "sact-paper-formula",
        "SA-CT (paper formula)",
        "sact",
        (("input_norm", False), ("distance", "seed")),
    ),
    Variant("protonet", "ProtoNet", "protonet"),
    Variant("trx", "TRX", "trx"),
    Variant("trx-grid", "TRX-grid", "trx-grid"),
    Variant("nearest-mean", "nearest mean", "nearest-mean"),
)
# the paper's comparison (issue 21): SA-CT, its two ablations and the two strongest baselines
DEFAULT_VARIANTS = ("sact", "sact-no-tmixer", "sact-no-cpe", "trx-grid", "protonet")
SIDE_BY_SIDE = ("auto", "on", "off")


def variant_names() -> list[str]:
    names = [variant.name for variant in VARIANTS]
    return names + [name for name in model_names() if name not in names]


def variant(name: str) -> Variant:
    """The variant `name`: one of VARIANTS, or any registered model kind as it is."""
    for known in VARIANTS:
        if known.name == name:
            return known
    if is_model(name):
        return Variant(name, model_kind(name).display_name, name)
    raise SweepError(f"unknown variant {name!r}; known: {', '.join(variant_names())}")


# ---- recipes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A method's published accuracy on a benchmark (%), None where its paper reports none."""

    method: str
    shots: dict[int, float | None]
    source: str  # paper and table


@dataclass(frozen=True)
class Recipe:
    """A published benchmark: where its split, features and budget come from, and the numbers
    papers report on it (data/recipes/<name>.toml)."""

    name: str
    title: str
    split: str  # a built-in split list (data/splits/)
    extract: dict[str, Any]  # sact extract's options: backbone, size, frames
    sweep: dict[str, Any]  # a sweep file's keys: variants, seeds, shots, steps, episodes, [train]
    published: tuple[Published, ...]
    notes: str = ""

    def extract_command(self) -> str:
        options = " ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in self.extract.items()
        )
        return f"sact extract --videos VIDEOS --split {self.split} {options} --out FEATS.zarr"


def recipes_folder() -> Path:
    return Path(str(importlib.resources.files("sact.data") / "recipes"))


def recipe_names() -> list[str]:
    return sorted(path.stem for path in recipes_folder().glob("*.toml"))


def read_recipe(name: str) -> Recipe:
    """The recipe shipped as data/recipes/<name>.toml; a name is never a path."""
    if name not in recipe_names():
        raise SweepError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    path = recipes_folder() / f"{name}.toml"
    where = f"recipe {name}"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        published = tuple(
            Published(
                method=method,
                shots={
                    int(shot): (None if value == "not reported" else float(value))
                    for shot, value in entry["accuracy"].items()
                },
                source=str(entry["source"]),
            )
            for method, entry in raw.get("published", {}).items()
        )
        return Recipe(
            name=name,
            title=str(raw["title"]),
            split=str(raw["split"]),
            extract=dict(raw["extract"]),
            sweep=dict(raw["sweep"]),
            published=published,
            notes=str(raw.get("notes", "")),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as error:
        raise SweepError(f"{where} is malformed: {error}") from error


# ---- the sweep's config -----------------------------------------------------------------------

# what a sweep sets in each run's TrainConfig itself: a file's [train] may not
SET_BY_THE_SWEEP = ("feats", "feature_set", "split", "model", "out", "seed", "device", "resume")
# the EvalConfig fields a file's [evaluate] may set; the others are each run's, or the sweep's
EVALUATE_KEYS = ("way", "query", "checkpoint", "precision", "batch_size", "workers")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep depends on; saved resolved as sweep.json in its folder."""

    feats: str = option("", help="Feature store (.zarr path or URL).")
    feature_set: str | None = option(
        None, help="Feature set in the store; needed if it holds several."
    )
    split: str | None = option(
        None,
        help="Split list: a built-in name or a folder; default: the recipe's, else the store's.",
    )
    variants: tuple[str, ...] = option(
        DEFAULT_VARIANTS,
        help="Variants, comma-separated or repeated: "
        + ", ".join(variant.name for variant in VARIANTS)
        + ", or any model kind.",
    )
    seeds: int = option(3, help="Training seeds per variant: --seed, --seed + 1, ...")
    seed: int = option(0, help="The first training seed; also the seed of the test episodes.")
    shots: tuple[int, ...] = option((1, 5), flag="--shot", help="Test shots K (repeatable).")
    steps: int | None = option(
        None, help="Training steps of every run; default: the recipe's, else sact train's."
    )
    episodes: int | None = option(
        None, help="Test episodes per shot setting; default: the recipe's, else sact evaluate's."
    )
    out: str = option("sweep", help="The sweep's folder: runs/, the test episodes, the report.")
    recipe: str | None = option(None, help="A published benchmark's recipe (see --list).")
    device: str = option("auto", help=DEVICE_HELP + " (under torchrun: each rank's GPU)")
    side_by_side: str = option(
        "auto",
        help="Train each variant's seeds side by side in one process, one step for all of them "
        "(fewshot/side_by_side.py): on, off, or auto: on only where bench/sweep.py (CPU) or "
        "bench/gpu.py (CUDA) measured it faster; docs/SWEEP.md, 'Side by side'.",
    )
    # every run's training and scoring, but for what the fields above and the variant set
    training: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    @property
    def variant_list(self) -> tuple[Variant, ...]:
        return tuple(variant(name) for name in self.variants)

    def runs(self) -> list[tuple[Variant, int]]:
        """Every (variant, training seed) of the sweep, variant by variant in the order asked."""
        seeds = range(self.seed, self.seed + self.seeds)
        return [(v, seed) for v in self.variant_list for seed in (seeds if v.trains else seeds[:1])]

    def run_config(self, variant: Variant, seed: int, folder: Path) -> TrainConfig:
        """The `sact train` config of one run: `training`, with the sweep's store, budget and
        device, the variant's model and changes, and the seed. A model option the variant's kind
        does not take stays at its default (the nearest mean has no d_k)."""
        config = replace(
            self.training,
            feats=self.feats,
            feature_set=self.feature_set,
            split=self.split,
            model=variant.model,
            out=str(folder),
            seed=seed,
            device=self.device,
            iterations=self.steps or self.training.iterations,
            resume=False,
            **dict(variant.changes),
        )
        takes = model_kind(variant.model).options()  # imports the head: torch
        untaken = {
            f.name: default_of(f)
            for f, spec in declared_options(TrainConfig)
            if spec.model and f.name not in takes
        }
        return replace(config, **untaken)

    def eval_config(self, folder: Path, episodes_file: Path) -> EvalConfig:
        """The `sact evaluate` config of one run: every run on the sweep's one episode file."""
        return replace(
            self.evaluation,
            run=str(folder),
            shots=self.shots,
            episodes=self.episodes or self.evaluation.episodes,
            seed=self.seed,
            episodes_file=str(episodes_file),
            device=self.device,
        )

    def check(self) -> None:
        if not self.feats:
            raise SweepError("missing --feats STORE (the feature store written by `sact extract`)")
        names = self.variant_list  # each name checked
        if len({v.name for v in names}) != len(names):
            raise SweepError(f"a variant is named twice in {', '.join(self.variants)}")
        if self.seeds < 1:
            raise SweepError(f"--seeds must be at least 1, got {self.seeds}")
        if not self.shots or min(self.shots) < 1:
            raise SweepError("need at least one --shot, each at least 1")
        for name in ("steps", "episodes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SweepError(f"--{name} must be at least 1, got {value}")
        if self.side_by_side not in SIDE_BY_SIDE:
            raise SweepError(
                f"--side-by-side must be {one_of(SIDE_BY_SIDE)}, got {self.side_by_side!r}"
            )
        if self.evaluation.checkpoint not in CHECKPOINTS:
            raise SweepError(
                f"[evaluate] checkpoint must be {one_of(CHECKPOINTS)}, got "
                f"{self.evaluation.checkpoint!r}"
            )
        if min(self.evaluation.way, self.evaluation.query, self.evaluation.batch_size) < 1:
            raise SweepError("[evaluate] way, query and batch_size must be at least 1")
        # every variant's training config, as `sact train` would check it, before any work
        for one in names:
            self.run_config(one, self.seed, Path(self.out)).check()

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def _split_commas(values: Any, where: str) -> tuple[str, ...]:
    """Names given as a list, or comma-separated in one string or in several."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise SweepError(f"{where}: variants must be names, as a list or comma-separated")
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def _typed(config: Any, values: dict[str, Any], where: str, allowed: tuple[str, ...]) -> Any:
    """`config` (a dataclass) with `values` of fields in `allowed`; an unknown key is refused."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    hints = get_type_hints(type(config))
    for name, value in changes.items():
        if not _fits(value, hints[name]):
            raise SweepError(f"{where}: {name} = {value!r} is not a {_type_name(hints[name])}")
    return replace(config, **changes)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` (as TOML or JSON gives it) has the field type `annotation`: bool, int,
    float (an int too), str, a tuple of one of them, or one of those or None."""
    if get_origin(annotation) in (UnionType, Union):
        return any(_fits(value, option) for option in get_args(annotation))
    if get_origin(annotation) is tuple:
        return isinstance(value, tuple) and all(_fits(v, get_args(annotation)[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(annotation, type) and isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) in (UnionType, Union):
        return " or ".join(_type_name(option) for option in get_args(annotation))
    if get_origin(annotation) is tuple:
        return f"list of {_type_name(get_args(annotation)[0])}"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def apply_layer(config: SweepConfig, layer: dict[str, Any], where: str) -> SweepConfig:
    """`config` with what one layer (a recipe's [sweep], a sweep file, typed options) sets."""
    layer = dict(layer)
    train = layer.pop("train", {})
    evaluate = layer.pop("evaluate", {})
    if not isinstance(train, dict) or not isinstance(evaluate, dict):
        raise SweepError(f"{where}: train and evaluate must be tables")
    top = tuple(f.name for f, _ in declared_options(SweepConfig))
    if "variants" in layer:
        layer["variants"] = _split_commas(layer["variants"], where)
    config = _typed(config, layer, where, top)
    trainable = tuple(f.name for f in fields(TrainConfig) if f.name not in SET_BY_THE_SWEEP)
    training = _typed(config.training, train, f"{where} [train]", trainable)
    evaluation = _typed(config.evaluation, evaluate, f"{where} [evaluate]", EVALUATE_KEYS)
    return replace(config, training=training, evaluation=evaluation)


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file's keys: TOML, or JSON for a name ending in .json."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError as error:
        raise SweepError(f"no sweep file at {path}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise SweepError(f"cannot read sweep file {path}: {error}") from error
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a table of keys")
    return data


def resolve_sweep(typed: dict[str, Any], *, file: Path | None = None) -> SweepConfig:
    """The sweep asked for: defaults, then the recipe (named typed or in the file), then the file,
    then the typed options (`typed`: field name -> value, only those given)."""
    from_file = read_sweep_file(file) if file is not None else {}
    recipe_name = typed.get("recipe") or from_file.get("recipe")
    config = SweepConfig()
    if recipe_name is not None:
        if not isinstance(recipe_name, str):
            raise SweepError(f"{file}: recipe must be a name")
        recipe = read_recipe(recipe_name)
        config = apply_layer(
            config, {"split": recipe.split, **recipe.sweep}, f"recipe {recipe.name}"
        )
    if file is not None:
        config = apply_layer(config, from_file, str(file))
    return apply_layer(config, typed, "the command line")


# ---- what `sact sweep --list` prints -----------------------------------------------------------


def recipes_table() -> Table:
    table = Table(title="sact sweep --recipe NAME: published benchmarks (data/recipes/)")
    for column in ("recipe", "benchmark", "extraction", "budget", "published (%)"):
        table.add_column(column)
    for name in recipe_names():
        recipe = read_recipe(name)
        sweep = recipe.sweep
        budget = (
            f"{len(sweep.get('variants', DEFAULT_VARIANTS))} variants × {sweep.get('seeds', 1)} "
            f"seeds, {sweep.get('steps', '?'):,} steps, {sweep.get('episodes', '?'):,} test "
            f"episodes per shot"
        )
        reported = [
            f"{p.method}: "
            + ", ".join(f"{shot}-shot {value}" for shot, value in p.shots.items() if value)
            for p in recipe.published
            if any(p.shots.values())
        ]
        missing = [p.method for p in recipe.published if not any(p.shots.values())]
        published = "\n".join(
            [*reported, *(["not reported: " + ", ".join(missing)] * bool(missing))]
        )
        table.add_row(name, recipe.title, recipe.extract_command(), budget, published)
    return table


def variants_table() -> Table:
    table = Table(title="sact sweep --variants: what each trains")
    for column in ("variant", "model", "changes"):
        table.add_column(column)
    for name in variant_names():
        one = variant(name)
        changes = ", ".join(f"{field_name}={value}" for field_name, value in one.changes)
        table.add_row(one.name, one.model, changes)
    return table
