"""Baselines on the same cached features and episodes as SA-CT.

- `NearestMean`: nearest class mean of the raw frozen features pooled over frames and patches. No
  parameters: the floor every learned head must beat.
- `ProtoNet`: the same nearest-class-mean rule on a learned per-patch embedding (an MLP D -> d_k
  applied to every patch of every frame before pooling), trained episodically like SA-CT.
- `TRX`: the faithful TRX head (Perrett et al., CVPR 2021) on frame features mean-pooled over
  patches.
- `GridTRX`: TRX on frame features that keep where things are: the learned per-patch MLP, then
  mean-pooled per cell of a coarse grid and the cells concatenated (docs/MODEL.md says why).

All are few-shot heads like SA-CT (fewshot/heads.py: `embed`, `match`, `forward`, `config`), so
training and evaluation treat them alike and report them side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sact.fewshot.heads import FewShotHead, VideoEmbedding, class_major


@dataclass(frozen=True)
class ProtoNetEmbedding(VideoEmbedding):
    features: Tensor  # (B, D) mean over frames and patches


def nearest_mean_logits(
    support: ProtoNetEmbedding, support_labels: Tensor, query: ProtoNetEmbedding, way: int | None
) -> Tensor:
    """−squared Euclidean distance of each query to each class mean of the support: (Q, N)."""
    support, way, shot = class_major(support, support_labels, way)
    # (N*K, D) -> (N, K, D) -> class means (N, D)
    prototypes = support.features.reshape(way, shot, -1).mean(dim=1)
    diff = query.features[:, None, :] - prototypes[None, :, :]  # (Q, N, D)
    return -diff.pow(2).sum(dim=-1)  # (Q, N)


class PooledPrototypes(FewShotHead[ProtoNetEmbedding]):
    """What NearestMean and ProtoNet share: a video is the float32 mean of its (T, P) vectors,
    and a query's logits are −squared Euclidean distances to the class means."""

    @staticmethod
    def pooled(x: Tensor) -> ProtoNetEmbedding:
        exact = torch.promote_types(x.dtype, torch.float32)  # float16 sums lose digits
        return ProtoNetEmbedding(features=x.to(exact).mean(dim=(1, 2)))  # (B, width)

    def match(
        self,
        support: ProtoNetEmbedding,
        support_labels: Tensor,
        query: ProtoNetEmbedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        return nearest_mean_logits(support, support_labels, query, way)


class NearestMean(PooledPrototypes):
    """Nearest class mean on pooled features: logits = −squared Euclidean to class means.

    It has no parameters: training it is a no-op, and the trainer skips optimisation for
    parameter-free models. `frames` and `grid` are accepted so every model is built the same way.
    """

    def embed(self, videos: Tensor) -> ProtoNetEmbedding:
        self.check_videos(videos)
        return self.pooled(videos)  # (B, D)


class PatchMLP(nn.Module):
    """The same two-layer MLP on every patch of every frame: (B, T, P, D) -> (B, T, P, width),
    through `hidden` channels.

    The ReLU between the layers matters: pooling after a purely linear map equals the linear map
    of the pooled features, so only a non-linear map can keep some patches (the object) and
    suppress others (the background) before the baselines pool.
    """

    def __init__(self, *, dim: int, hidden: int, width: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.relu(self.w1(x)))  # (B, T, P, width)


class ProtoNet(PooledPrototypes):
    """Prototypical network on a learned per-patch embedding, pooled over frames and patches.

    embed: e = mean over (T, P) of PatchMLP(x), (B, d_k); match: logits = −‖e_q − mean_c e_s‖².
    """

    def __init__(
        self, *, dim: int, frames: int, grid: tuple[int, int] | int, d_k: int = 1152
    ) -> None:
        super().__init__(dim=dim, frames=frames, grid=grid)
        self.d_k = d_k
        self.encoder = PatchMLP(dim=dim, hidden=d_k, width=d_k)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "d_k": self.d_k}

    def embed(self, videos: Tensor) -> ProtoNetEmbedding:
        self.check_videos(videos)
        x = videos.to(self.encoder.w1.weight.dtype)  # cached features are float16
        return self.pooled(self.encoder(x))  # (B, T, P, d_k) -> (B, d_k)


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
        # index_select rather than frames[:, self.tuples], which copies the same numbers but whose
        # CPU backward adds each frame's gradient from its many tuples with parallel atomic float
        # adds (index_put_ with accumulate, on 2+ threads): their order, and so the last bits of
        # every gradient upstream (GridTRX's per-patch MLP), changed from run to run.
        # index_select's backward adds them in a fixed order.
        b, n_tuples = frames.shape[0], self.tuples.shape[0]
        tuples = frames.index_select(1, self.tuples.flatten())  # (B, n_tuples*card, D)
        tuples = tuples.reshape(b, n_tuples, -1)  # (B, n_tuples, card*D): frames side by side
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


class GridTRX(FewShotHead[TRXEmbedding]):
    """TRX on frame features that keep where things are (docs/MODEL.md, "GridTRX").

    Each patch goes through a learned PatchMLP (D -> D -> width), the h x w grid is mean-pooled
    to cells x cells, and the cells are concatenated in row-major order: a frame feature of
    cells²·width channels, width = D / cells² by default, so the tuple heads are as wide as the
    faithful TRX's. The faithful TRX head then runs on these frame features unchanged.
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
        cells: int = 2,
        width: int | None = None,
    ) -> None:
        super().__init__(dim=dim, frames=frames, grid=grid)
        if not 1 <= cells <= min(self.grid):
            raise ValueError(
                f"cells must lie in 1..{min(self.grid)} for grid {self.grid}, got {cells}"
            )
        self.cells, self.width = cells, width or max(1, dim // cells**2)
        self.encoder = PatchMLP(dim=dim, hidden=dim, width=self.width)
        self.trx = TRX(
            dim=cells * cells * self.width,
            frames=frames,
            grid=1,
            d_k=d_k,
            cardinalities=cardinalities,
            dropout=dropout,
        )

    def config(self) -> dict[str, Any]:
        trx = self.trx.config()
        return {
            **super().config(),
            "d_k": trx["d_k"],
            "cardinalities": trx["cardinalities"],
            "dropout": trx["dropout"],
            "cells": self.cells,
            "width": self.width,
        }

    def frame_features(self, videos: Tensor) -> Tensor:
        """(B, T, P, D) -> (B, T, 1, cells²·width): one position-keeping vector per frame."""
        b, t, _, _ = videos.shape
        h, w = self.grid
        x = self.encoder(videos.to(self.encoder.w1.weight.dtype))  # (B, T, P, width)
        x = x.reshape(b * t, h, w, self.width).permute(0, 3, 1, 2)  # (B*T, width, h, w)
        x = F.adaptive_avg_pool2d(x, self.cells)  # (B*T, width, cells, cells)
        return x.permute(0, 2, 3, 1).reshape(b, t, 1, -1)  # (B, T, 1, cells²·width), row-major

    def embed(self, videos: Tensor) -> TRXEmbedding:
        self.check_videos(videos)
        return self.trx.embed(self.frame_features(videos))

    def match(
        self,
        support: TRXEmbedding,
        support_labels: Tensor,
        query: TRXEmbedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        return self.trx.match(support, support_labels, query, way=way)
