"""sact: SA-CT few-shot action recognition on a cached feature store.

The public Python API, importable without paying for torch until it is used::

    import sact

    features = sact.open_feature_set("feats.zarr")           # read-only, zarr or HDF5
    result = sact.train(sact.TrainConfig(feats="feats.zarr", iterations=1000, out="runs/x"))
    scores = sact.evaluate(sact.EvalConfig(run="runs/x", episodes=1000))
    model = sact.SACT(dim=2048, frames=8, grid=7)  # as sact train trains it; SACT.paper(...)

The repository's folders are this package's subpackages: ``sact.extract`` (stage 1),
``sact.fewshot`` (stage 2), ``sact.data`` (split lists), ``sact.cli`` (the command line).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("sact")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# name -> module that defines it; imported on first use, so `import sact` (and the command line's
# start-up) does not import torch, timm or zarr.
_PUBLIC = {
    "open_feature_set": "sact.store.backends",
    "FeatureSet": "sact.store.feature_set",
    "SACT": "sact.fewshot.model",
    "ProtoNet": "sact.fewshot.baselines",
    "NearestMean": "sact.fewshot.baselines",
    "TRX": "sact.fewshot.baselines",
    "GridTRX": "sact.fewshot.baselines",
    "TrainConfig": "sact.fewshot.config",
    "train": "sact.fewshot.training",
    "EvalConfig": "sact.fewshot.config",
    "evaluate": "sact.fewshot.evaluation",
    "ExtractConfig": "sact.extract.config",
    "run_extraction": "sact.extract.pipeline",
}

__all__ = [  # noqa: RUF022  (grouped by stage, like _PUBLIC)
    "__version__",
    "open_feature_set",
    "FeatureSet",
    "SACT",
    "ProtoNet",
    "NearestMean",
    "TRX",
    "GridTRX",
    "TrainConfig",
    "train",
    "EvalConfig",
    "evaluate",
    "ExtractConfig",
    "run_extraction",
]

if TYPE_CHECKING:
    from sact.extract.config import ExtractConfig
    from sact.extract.pipeline import run_extraction
    from sact.fewshot.baselines import TRX, GridTRX, NearestMean, ProtoNet
    from sact.fewshot.config import EvalConfig, TrainConfig
    from sact.fewshot.evaluation import evaluate
    from sact.fewshot.model import SACT
    from sact.fewshot.training import train
    from sact.store.backends import open_feature_set
    from sact.store.feature_set import FeatureSet


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sact' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
