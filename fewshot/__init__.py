"""Stage 2 of sact: few-shot episodes, the SA-CT model and its baselines, training and evaluation.

Everything here works on cached features read from a feature store; nothing imports the video
decoder or the backbone. The models are imported on first use, so the command line can read
`sact.fewshot.config` (its option defaults) without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it, imported on first use
_DEFINED_IN = {
    "SACT": "sact.fewshot.model",
    "SACTEmbedding": "sact.fewshot.model",
    "VideoEmbedding": "sact.fewshot.model",
    "TRX": "sact.fewshot.baselines",
    "ProtoNet": "sact.fewshot.baselines",
    "ProtoNetEmbedding": "sact.fewshot.baselines",
    "TRXEmbedding": "sact.fewshot.baselines",
}

if TYPE_CHECKING:
    from torch import nn

    from sact.fewshot.baselines import TRX as TRX
    from sact.fewshot.baselines import ProtoNet as ProtoNet
    from sact.fewshot.baselines import ProtoNetEmbedding as ProtoNetEmbedding
    from sact.fewshot.baselines import TRXEmbedding as TRXEmbedding
    from sact.fewshot.model import SACT as SACT
    from sact.fewshot.model import SACTEmbedding as SACTEmbedding
    from sact.fewshot.model import VideoEmbedding as VideoEmbedding

    MODELS: dict[str, type[nn.Module]]


def __getattr__(name: str) -> Any:
    value: Any
    if name == "MODELS":  # model kinds by name, so training can rebuild a model from its config
        value = {
            "sact": __getattr__("SACT"),
            "protonet": __getattr__("ProtoNet"),
            "trx": __getattr__("TRX"),
        }
    elif name in _DEFINED_IN:
        value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
    else:
        raise AttributeError(f"module 'sact.fewshot' has no attribute {name!r}")
    globals()[name] = value
    return value
