"""Each command-line option declared once: a config dataclass field that carries its help.

`option(default, help=...)` declares a field of a config dataclass (`ExtractConfig`, `TrainConfig`,
`EvalConfig`, ...) that is also an option of its command: the option's name (`--feature-set` for
`feature_set`), type, default and help all come from the field, and cli.py builds each command's
options from its config's fields. A field declared without `option` is a setting of the library
only (e.g. `TrainConfig.prefetch`). `model_option` declares a `TrainConfig` field that `sact train`
passes to the model's constructor, for the kinds whose constructor takes it (fewshot/kinds.py).

`checked(config)` runs a config's `check()` once and returns it as `Checked`: the command line
checks a config before it imports torch, and the stage it hands the `Checked` config to runs it
without checking it again.

This module imports nothing heavy, not even typer: the configs import it, and the command line
reads the configs at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Generic, Protocol, TypeVar

# where a field keeps its OptionSpec, in `dataclasses.field(metadata=...)`
METADATA_KEY = "sact.option"


@dataclass(frozen=True)
class OptionSpec:
    """What the command line needs of a field besides its name, type and default."""

    help: str
    # the option's name when it is not --<field-name> (`--shot` for `shots`); a bool option given
    # one is a switch that only turns it on (`--resume`), otherwise it is `--x/--no-x`
    flag: str | None = None
    metavar: str | None = None  # what a required option takes, named when it is missing
    model: bool = False  # passed to the model's constructor (TrainConfig)


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    model: bool = False,
) -> Any:
    """A config field that is also an option of its command. Without a default it is required:
    the command line refuses to run without it, naming it with `metavar`."""
    spec = OptionSpec(help=help, flag=flag, metavar=metavar, model=model)
    return field(default=default, default_factory=default_factory, metadata={METADATA_KEY: spec})


def model_option(default: Any, *, help: str) -> Any:
    """A `TrainConfig` field passed to the constructor of every model kind that takes it."""
    return option(default, help=help, model=True)


def option_spec(config_field: Field[Any]) -> OptionSpec | None:
    """The field's OptionSpec; None for a field that is not on the command line."""
    return config_field.metadata.get(METADATA_KEY)


def declared_options(config: Any) -> list[tuple[Field[Any], OptionSpec]]:
    """The fields of a config dataclass (the class or an instance) that are command-line options,
    in the order declared."""
    found = []
    for config_field in fields(config):
        spec = option_spec(config_field)
        if spec is not None:
            found.append((config_field, spec))
    return found


def option_name(config: Any, name: str) -> str:
    """How the command line spells field `name` of `config`, e.g. ``--shot`` for ``shots``."""
    for config_field, spec in declared_options(config):
        if config_field.name == name:
            return spec.flag or "--" + name.replace("_", "-")
    raise KeyError(f"{name} is not a command-line option of {type(config).__name__}")


def default_of(config_field: Field[Any]) -> Any:
    """The field's default (its factory called); MISSING for a required field."""
    if config_field.default_factory is not MISSING:
        return config_field.default_factory()
    return config_field.default


class Checkable(Protocol):
    def check(self) -> None: ...


Config = TypeVar("Config", bound=Checkable)


@dataclass(frozen=True)
class Checked(Generic[Config]):
    """A config whose `check()` passed: a stage given one runs it without checking it again."""

    config: Config


def checked(config: Config | Checked[Config]) -> Checked[Config]:
    """``config`` checked, once: a config that already is `Checked` is returned as it is."""
    if isinstance(config, Checked):
        return config
    config.check()
    return Checked(config)
