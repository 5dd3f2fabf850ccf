"""Baselines on the same cached features and episodes as SA-CT: ProtoNet and a TRX head.

Both are few-shot heads like SA-CT (fewshot/heads.py: `embed`, `match`, `forward`, `config`), so
training and evaluation treat all three alike and report them side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from torch import Tensor, nn

from sact.fewshot.heads import FewShotHead, VideoEmbedding, class_major


@dataclass(frozen=True)
class ProtoNetEmbedding(VideoEmbedding):
    features: Tensor  # (B, D) mean over frames and patches


class ProtoNet(FewShotHead[ProtoNetEmbedding]):
    """Prototypical network on pooled features: logits = −squared Euclidean to class means.

    It has no parameters: training it is a no-op, and the trainer skips optimisation for
    parameter-free models. `frames` and `grid` are accepted so every model is built the same way.
    """

    def embed(self, videos: Tensor) -> ProtoNetEmbedding:
        self.check_videos(videos)
        exact = torch.promote_types(videos.dtype, torch.float32)  # float16 sums lose digits
        return ProtoNetEmbedding(features=videos.to(exact).mean(dim=(1, 2)))  # (B, D)

    def match(
        self,
        support: ProtoNetEmbedding,
        support_labels: Tensor,
        query: ProtoNetEmbedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        support, way, shot = class_major(support, support_labels, way)
        # (N*K, D) -> (N, K, D) -> class means (N, D)
        prototypes = support.features.reshape(way, shot, -1).mean(dim=1)
        diff = query.features[:, None, :] - prototypes[None, :, :]  # (Q, N, D)
        return -diff.pow(2).sum(dim=-1)  # (Q, N)


class PositionalEncoding(nn.Module):
    """TRX's sinusoidal encoding, scaled by 0.1, added to frame features, then dropout."""

    encoding: Tensor  # (T, D), a buffer

    def __init__(self, *, dim: int, frames: int, dropout: float, scale: float = 0.1) -> None:
        super().__init__()
        position = torch.arange(frames, dtype=torch.float64)[:, None]  # (T, 1)
        rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * -(math.log(1e4) / dim))
        encoding = torch.zeros(frames, dim, dtype=torch.float64)
        encoding[:, 0::2] = torch.sin(position * rate) * scale
        encoding[:, 1::2] = torch.cos(position * rate[: dim // 2]) * scale
        # a pure function of (frames, dim): rebuilt here, so not part of a checkpoint
        self.register_buffer("encoding", encoding.float(), persistent=False)  # (T, D)
        self.dropout = nn.Dropout(dropout)

    def forward(self, frames: Tensor) -> Tensor:
        return self.dropout(frames + self.encoding.to(frames.dtype))  # (B, T, D)


class TupleHead(nn.Module):
    """Keys and values of all ordered frame tuples of one cardinality (TRX's cross transformer)."""

    tuples: Tensor  # (n_tuples, cardinality) frame indices, a buffer

    def __init__(self, *, dim: int, frames: int, cardinality: int, d_k: int) -> None:
        super().__init__()
        tuples = list(combinations(range(frames), cardinality))
        if not tuples:
            raise ValueError(
                f"tuples of {cardinality} frames need T >= {cardinality}, got {frames}"
            )
        self.register_buffer("tuples", torch.tensor(tuples), persistent=False)  # (n_tuples, card)
        self.to_key = nn.Linear(dim * cardinality, d_k)
        self.to_value = nn.Linear(dim * cardinality, d_k)
        self.norm_key = nn.LayerNorm(d_k)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        tuples = frames[:, self.tuples]  # (B, n_tuples, card, D)
        tuples = tuples.flatten(-2)  # (B, n_tuples, card*D): the tuple's frames side by side
        return self.norm_key(self.to_key(tuples)), self.to_value(tuples)  # (B, n_tuples, d_k) x2


@dataclass(frozen=True)
class TRXEmbedding(VideoEmbedding):
    keys: tuple[Tensor, ...]  # per cardinality (B, n_tuples, d_k), after LayerNorm
    values: tuple[Tensor, ...]  # per cardinality (B, n_tuples, d_k)


class TRX(FewShotHead[TRXEmbedding]):
    """TRX (Perrett et al., CVPR 2021) head on frame features mean-pooled over patches.

    For each cardinality: every query tuple attends over all tuples of all shots of a class
    (softmax scaled by √d_k), the attended values form a query-specific prototype, and the
    distance is the squared norm of (query values − prototype) over tuples and channels divided by
    the number of tuples. Logits are −distance averaged over the cardinalities.
    """

    def __init__(
        self,
        *,
        dim: int,
        frames: int,
        grid: tuple[int, int] | int,
        d_k: int = 1152,
        cardinalities: tuple[int, ...] | list[int] = (2, 3),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dim=dim, frames=frames, grid=grid)
        self.d_k = d_k
        self.cardinalities, self.dropout = tuple(cardinalities), dropout
        self.positional = PositionalEncoding(dim=dim, frames=frames, dropout=dropout)
        self.heads = nn.ModuleList(
            TupleHead(dim=dim, frames=frames, cardinality=c, d_k=d_k) for c in self.cardinalities
        )

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "d_k": self.d_k,
            "cardinalities": list(self.cardinalities),
            "dropout": self.dropout,
        }

    def embed(self, videos: Tensor) -> TRXEmbedding:
        self.check_videos(videos)
        x = videos.to(next(self.heads.parameters()).dtype)  # cached features are float16
        frames = self.positional(x.mean(dim=2))  # (B, T, D)
        keys, values = zip(*(head(frames) for head in self.heads), strict=True)
        return TRXEmbedding(keys=tuple(keys), values=tuple(values))

    def match(
        self,
        support: TRXEmbedding,
        support_labels: Tensor,
        query: TRXEmbedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        support, way, shot = class_major(support, support_labels, way)
        logits = []
        for s_keys, s_values, q_keys, q_values in zip(
            support.keys, support.values, query.keys, query.values, strict=True
        ):
            n_tuples, d_k = s_keys.shape[1:]
            s_keys = s_keys.reshape(way, shot * n_tuples, d_k)  # (N, K*n_tuples, d_k)
            s_values = s_values.reshape(way, shot * n_tuples, d_k)  # (N, K*n_tuples, d_k)
            dtype = torch.promote_types(s_keys.dtype, q_keys.dtype)
            q_keys = q_keys.to(dtype) / math.sqrt(d_k)  # scaled first: no float16 overflow
            scores = torch.einsum("qad,nbd->nqab", q_keys, s_keys.to(dtype))
            # (N, Q, n_tuples, K*n_tuples)
            attention = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1)
            prototype = torch.einsum(
                "nqab,nbd->nqad", attention.to(s_values.dtype), s_values
            )  # (N, Q, n_tuples, d_k)
            exact = torch.promote_types(prototype.dtype, torch.float32)
            diff = q_values.to(exact)[None] - prototype.to(exact)  # (N, Q, n_tuples, d_k)
            distance = diff.pow(2).sum(dim=(-2, -1)) / n_tuples  # (N, Q)
            logits.append(-distance.transpose(0, 1))  # (Q, N)
        return torch.stack(logits).mean(dim=0)  # (Q, N)
