"""The one list of model kinds: what `--model` accepts, how tables name each kind, its head class.

Every head class is a `FewShotHead` (fewshot/heads.py). Adding a kind is one `register_model` line
at the end of this file (or a call from your own code), naming the class as "module:Class". The
model options a kind takes are read from its head's constructor (`ModelKind.options`): `sact train`
passes it those of its model options (TrainConfig's `model_option` fields) the constructor names.
This module imports nothing heavy: the command line checks `--model` and lists the kinds in its
help before torch is imported, and a head class is imported when a model of its kind is built or
its options are read. Training, evaluation, checkpoints, the demo and the benchmarks read the
kinds from here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sact.fewshot.heads import FewShotHead


@dataclass(frozen=True)
class ModelKind:
    name: str  # what `--model` takes, and `model` in checkpoint.json
    display_name: str  # in tables and figures
    head: str  # "module:Class" of its FewShotHead subclass, imported on first use

    def head_class(self) -> type[FewShotHead[Any]]:
        from sact.fewshot.heads import FewShotHead

        module, _, name = self.head.partition(":")
        head = getattr(importlib.import_module(module), name)
        if not (isinstance(head, type) and issubclass(head, FewShotHead)):
            raise TypeError(f"model kind {self.name!r}: {self.head} is not a FewShotHead")
        return head

    def options(self) -> tuple[str, ...]:
        """The keyword options of its head's constructor besides those every head takes (dim,
        frames, grid), read from the constructor; imports the head."""
        from sact.fewshot.heads import FewShotHead

        every_head = inspect.signature(FewShotHead.__init__).parameters
        constructor = inspect.signature(self.head_class().__init__).parameters
        return tuple(
            name
            for name, parameter in constructor.items()
            if parameter.kind is parameter.KEYWORD_ONLY and name not in every_head
        )

    def build(self, **config: Any) -> FewShotHead[Any]:
        """A head of this kind from the kwargs `head.config()` returned."""
        return self.head_class()(**config)


# the registry: name -> kind, in the order registered
_KINDS: dict[str, ModelKind] = {}


def register_model(name: str, *, display_name: str, head: str) -> ModelKind:
    """Make `head` ("module:Class", a FewShotHead subclass) the model kind `name`."""
    if name in _KINDS:
        raise ValueError(f"model kind {name!r} is already registered ({_KINDS[name].head})")
    kind = ModelKind(name, display_name, head)
    _KINDS[name] = kind
    return kind


def is_model(name: str) -> bool:
    return name in _KINDS


def model_kinds() -> tuple[ModelKind, ...]:
    """Every kind, in the order registered: SA-CT first, then the baselines."""
    return tuple(_KINDS.values())


def model_names() -> list[str]:
    return list(_KINDS)


def model_kind(name: str) -> ModelKind:
    """The kind `name`; KeyError naming the known kinds when there is none."""
    if name not in _KINDS:
        raise KeyError(f"unknown model kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


def create_model(name: str, **config: Any) -> FewShotHead[Any]:
    """A head of kind `name` built from `config` (what `head.config()` returned)."""
    return model_kind(name).build(**config)


def one_of(names: Sequence[str]) -> str:
    """'a, b or c', for messages that offer the kinds."""
    *others, last = names
    return f"{', '.join(others)} or {last}" if others else last


register_model("sact", display_name="SA-CT", head="sact.fewshot.model:SACT")
register_model("protonet", display_name="ProtoNet", head="sact.fewshot.baselines:ProtoNet")
register_model(
    "nearest-mean", display_name="nearest mean", head="sact.fewshot.baselines:NearestMean"
)
register_model("trx", display_name="TRX", head="sact.fewshot.baselines:TRX")
register_model("trx-grid", display_name="TRX-grid", head="sact.fewshot.baselines:GridTRX")
