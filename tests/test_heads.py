"""The one list of model kinds (fewshot/kinds.py) and the interface every head shares (heads.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from typer.main import get_command

from sact.cli import app
from sact.common.options import declared_options
from sact.fewshot import kinds
from sact.fewshot.checkpoints import CheckpointError, build_model
from sact.fewshot.config import TrainConfig, TrainingError
from sact.fewshot.heads import FewShotHead, VideoEmbedding, group_by_class
from sact.fewshot.kinds import create_model, is_model, model_kind, model_kinds, register_model


@dataclass(frozen=True)
class FrameMeans(VideoEmbedding):
    frames: Tensor  # (B, T, D)


class NearestFrames(FewShotHead[FrameMeans]):
    """A head someone might add: per-frame means, logits −distance to the class's mean frames."""

    def embed(self, videos: Tensor) -> FrameMeans:
        self.check_videos(videos)
        return FrameMeans(frames=videos.float().mean(dim=2))  # (B, T, D)

    def match(
        self, support: FrameMeans, support_labels: Tensor, query: FrameMeans, *, way=None
    ) -> Tensor:
        order, way, shot = group_by_class(support_labels, way)
        prototypes = support.frames[order].unflatten(0, (way, shot)).mean(dim=1)  # (N, T, D)
        return -(query.frames[:, None] - prototypes[None]).pow(2).sum(dim=(2, 3))  # (Q, N)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test: kinds a test registers do not leak."""
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))


def test_the_built_in_kinds_in_order_with_their_names():
    assert [(kind.name, kind.display_name) for kind in model_kinds()] == [
        ("sact", "SA-CT"),
        ("protonet", "ProtoNet"),
        ("nearest-mean", "nearest mean"),
        ("trx", "TRX"),
        ("trx-grid", "TRX-grid"),
    ]
    assert all(issubclass(kind.head_class(), FewShotHead) for kind in model_kinds())
    assert is_model("trx") and not is_model("resnet")
    with pytest.raises(
        KeyError,
        match="unknown model kind 'resnet'; known: sact, protonet, nearest-mean, trx, trx-grid",
    ):
        model_kind("resnet")


def test_each_kind_takes_the_model_options_its_constructor_names():
    assert {kind.name: kind.options() for kind in model_kinds()} == {
        "sact": ("d_k", "tmixer", "cpe", "input_norm", "distance"),
        "protonet": ("d_k",),
        "nearest-mean": (),
        "trx": ("d_k", "cardinalities", "dropout"),
        "trx-grid": ("d_k", "cardinalities", "dropout", "cells", "width"),
    }
    model_options = {f.name for f, spec in declared_options(TrainConfig) if spec.model}
    command = get_command(app).commands["train"]
    assert model_options <= {param.name for param in command.params}
    # every model option of `sact train` reaches some kind's constructor
    assert model_options <= {name for kind in model_kinds() for name in kind.options()}
    assert TrainConfig(feats="", model="trx", d_k=8).model_options() == {"d_k": 8}


def test_the_kinds_are_listed_without_importing_torch():
    code = (
        "import sys; from sact.fewshot.kinds import model_kinds; "
        "print(len(model_kinds()), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["5", "False"]


def test_one_line_adds_a_kind(registry):
    register_model(
        "nearest-frames", display_name="Nearest frames", head=f"{__name__}:NearestFrames"
    )
    assert [kind.name for kind in model_kinds()][-1] == "nearest-frames"
    TrainConfig(feats=".", model="nearest-frames").check()
    model = build_model("nearest-frames", {"dim": 6, "frames": 4, "grid": 2})
    assert isinstance(model, NearestFrames)
    assert model.config() == {"dim": 6, "frames": 4, "grid": [2, 2]}
    support, query = torch.randn(6, 4, 4, 6), torch.randn(3, 4, 4, 6)  # (N*K, T, P, D), (Q, ...)
    assert model(support, torch.tensor([0, 1, 2, 0, 1, 2]), query).shape == (3, 3)
    # it takes no model option, so the command line's --d-k is refused for it
    with pytest.raises(TrainingError, match="--d-k applies to sact, protonet, trx, trx-grid only"):
        TrainConfig(feats="", model="nearest-frames", d_k=8).model_options()
    with pytest.raises(ValueError, match="already registered"):
        register_model("nearest-frames", display_name="again", head=f"{__name__}:NearestFrames")


def test_a_kind_that_is_not_a_head_or_not_registered_is_one_clear_error(registry):
    register_model("frames", display_name="Frames", head=f"{__name__}:FrameMeans")
    with pytest.raises(CheckpointError, match=r"cannot build a frames model.*not a FewShotHead"):
        build_model("frames", {"dim": 4, "frames": 2, "grid": 1})
    with pytest.raises(CheckpointError, match="unknown model kind 'bert'; known: sact, protonet"):
        build_model("bert", {"dim": 4, "frames": 2, "grid": 1})
    with pytest.raises(
        TrainingError, match="--model must be sact, protonet, nearest-mean, trx, trx-grid or frames"
    ):
        TrainConfig(feats="", model="bert").check()
    with pytest.raises(TypeError, match="abstract"):
        FewShotHead(dim=4, frames=2, grid=1)
    assert create_model("nearest-mean", dim=4, frames=2, grid=1).config()["grid"] == [1, 1]
