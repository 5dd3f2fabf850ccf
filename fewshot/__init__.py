"""Stage 2 of sact: few-shot episodes, the SA-CT model and its baselines, training and evaluation.

Everything here works on cached features read from a feature store; nothing imports the video
decoder or the backbone. The models are imported on first use, so the command line can read
`sact.fewshot.config` (its option defaults) and `sact.fewshot.kinds` (the model kinds) without
paying for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it, imported on first use
_DEFINED_IN = {
    "SACT": "sact.fewshot.model",
    "SACTEmbedding": "sact.fewshot.model",
    "TRX": "sact.fewshot.baselines",
    "GridTRX": "sact.fewshot.baselines",
    "ProtoNet": "sact.fewshot.baselines",
    "NearestMean": "sact.fewshot.baselines",
    "ProtoNetEmbedding": "sact.fewshot.baselines",
    "TRXEmbedding": "sact.fewshot.baselines",
    "FewShotHead": "sact.fewshot.heads",
    "VideoEmbedding": "sact.fewshot.heads",
    "ModelKind": "sact.fewshot.kinds",
    "create_model": "sact.fewshot.kinds",
    "is_model": "sact.fewshot.kinds",
    "model_kind": "sact.fewshot.kinds",
    "model_kinds": "sact.fewshot.kinds",
    "register_model": "sact.fewshot.kinds",
}

if TYPE_CHECKING:
    from sact.fewshot.baselines import TRX as TRX
    from sact.fewshot.baselines import GridTRX as GridTRX
    from sact.fewshot.baselines import NearestMean as NearestMean
    from sact.fewshot.baselines import ProtoNet as ProtoNet
    from sact.fewshot.baselines import ProtoNetEmbedding as ProtoNetEmbedding
    from sact.fewshot.baselines import TRXEmbedding as TRXEmbedding
    from sact.fewshot.heads import FewShotHead as FewShotHead
    from sact.fewshot.heads import VideoEmbedding as VideoEmbedding
    from sact.fewshot.kinds import ModelKind as ModelKind
    from sact.fewshot.kinds import create_model as create_model
    from sact.fewshot.kinds import is_model as is_model
    from sact.fewshot.kinds import model_kind as model_kind
    from sact.fewshot.kinds import model_kinds as model_kinds
    from sact.fewshot.kinds import register_model as register_model
    from sact.fewshot.model import SACT as SACT
    from sact.fewshot.model import SACTEmbedding as SACTEmbedding


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module 'sact.fewshot' has no attribute {name!r}")
    value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
    globals()[name] = value
    return value
