"""What every few-shot head is: `FewShotHead`, and the per-video `VideoEmbedding` it works on.

A head (SA-CT in fewshot/model.py, the baselines in fewshot/baselines.py) is a `FewShotHead`:
`embed` does everything that depends on one video, `match` everything per episode, `forward` is
`match` of `embed`, and `config()` returns the keyword arguments that rebuild it (docs/MODEL.md,
"Interface"). Training, evaluation, checkpoints, `explain` and the benchmarks take a `FewShotHead`;
the model kinds that name the head classes are listed once, in fewshot/kinds.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Generic, Self, TypeVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class VideoEmbedding:
    """Base for per-video embeddings: every field is a tensor (or a tuple of tensors) whose first
    dim is the video, so `emb[index]` selects videos, `emb.to(device)` moves them, `len(emb)`
    counts them."""

    def __post_init__(self) -> None:
        counts = {tensor.shape[0] for tensor in self._tensors()}
        if len(counts) > 1:
            raise ValueError(f"{type(self).__name__}: fields disagree on the number of videos")

    def _tensors(self) -> list[Tensor]:
        tensors: list[Tensor] = []
        for field in fields(self):
            value = getattr(self, field.name)
            tensors.extend(value if isinstance(value, tuple) else [value])
        return tensors

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Self:
        def apply(value: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
            return tuple(fn(t) for t in value) if isinstance(value, tuple) else fn(value)

        return type(self)(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, index: Tensor | slice | int) -> Self:
        if isinstance(index, int):  # keep the video dim: emb[3] is a batch of one video
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(
            lambda t: t[
                index.to(t.device, non_blocking=True) if isinstance(index, Tensor) else index
            ]
        )

    def to(self, device: torch.device | str) -> Self:
        return self._map(lambda t: t.to(device))

    @property
    def device(self) -> torch.device:
        return self._tensors()[0].device

    def bytes_per_video(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self._tensors())

    def __len__(self) -> int:
        return self._tensors()[0].shape[0]


def as_grid(grid: tuple[int, int] | list[int] | int) -> tuple[int, int]:
    """(h, w) from a grid given as (h, w) or as the side of a square."""
    h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return int(h), int(w)


def group_by_class(labels: Tensor, way: int | None) -> tuple[Tensor, int, int]:
    """Order of the support videos that puts them class by class (on the CPU), plus (N, K).

    Support shots of class c are those labelled c; every class must have the same number of shots.
    The sort is stable, so shots keep their order (which never matters for the logits anyway).
    The labels are checked on the CPU: labels that are there already, as training and evaluation
    pass them, cost a GPU no synchronisation (labels on a GPU are copied over once).
    """
    labels = labels.cpu()
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(
            f"support_labels must be a non-empty 1-d tensor, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"support_labels must be integers, got {labels.dtype}")
    labels = labels.long()
    way = int(labels.max()) + 1 if way is None else way
    if int(labels.min()) < 0 or int(labels.max()) >= way:
        raise ValueError(f"support_labels must lie in 0..{way - 1}, got {labels.tolist()}")
    shots = torch.bincount(labels, minlength=way).tolist()
    if len(set(shots)) != 1:
        raise ValueError(f"every class needs the same number of shots, got {shots} per class")
    return torch.argsort(labels, stable=True), way, shots[0]


Embedding = TypeVar("Embedding", bound=VideoEmbedding)


def class_major(support: Embedding, labels: Tensor, way: int | None) -> tuple[Embedding, int, int]:
    """The support videos class by class (`group_by_class`), and (N, K); supports that already are
    (as training and evaluation pass them) are used as they are, without an index copy."""
    order, way, shot = group_by_class(labels, way)
    if torch.equal(order, torch.arange(len(order))):
        return support, way, shot
    return support[order], way, shot


def episode_shape(supports: int, queries: int, *, episodes: int, way: int) -> tuple[int, int]:
    """(K, Q) of E N-way episodes laid end to end in `supports` and `queries` videos."""
    if episodes < 1 or supports % (episodes * way) or queries % episodes:
        raise ValueError(
            f"{supports} support and {queries} query videos do not make "
            f"{episodes} {way}-way episodes"
        )
    return supports // (episodes * way), queries // episodes


class FewShotHead(nn.Module, ABC, Generic[Embedding]):
    """A few-shot head on cached features (B, T, P, D): D channels, T frames, an h x w grid."""

    def __init__(self, *, dim: int, frames: int, grid: tuple[int, int] | list[int] | int) -> None:
        super().__init__()
        self.dim, self.frames, self.grid = dim, frames, as_grid(grid)

    def check_videos(self, videos: Tensor) -> None:
        """One clear error when cached features do not have the shape the head was built for."""
        patches = self.grid[0] * self.grid[1]
        expected = f"(B, T={self.frames}, P={patches}, D={self.dim})"
        if videos.ndim != 4 or tuple(videos.shape[1:]) != (self.frames, patches, self.dim):
            raise ValueError(f"videos must have shape {expected}, got {tuple(videos.shape)}")

    def config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this head: `type(head)(**head.config())`."""
        return {"dim": self.dim, "frames": self.frames, "grid": list(self.grid)}

    @abstractmethod
    def embed(self, videos: Tensor) -> Embedding:
        """Everything that depends on one video: videos (B, T, P, D) -> B embeddings."""

    @abstractmethod
    def match(
        self,
        support: Embedding,
        support_labels: Tensor,
        query: Embedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        """One episode: support (N*K) and query (Q) embeddings, labels (N*K,) -> logits (Q, N)."""

    def match_episodes(
        self, support: Embedding, query: Embedding, *, episodes: int, way: int
    ) -> Tensor:
        """`match` of E episodes of one N-way K-shot Q-query shape: logits (E, Q, N).

        support: E·N·K videos, episode by episode, class-major within each (shot k of class c of
        episode e is row (e·N + c)·K + k); query: E·Q videos, episode by episode. Evaluation
        scores many episodes per call through this; the default runs `match` episode by
        episode, a head that can batch them overrides it.
        """
        shot, queries = episode_shape(len(support), len(query), episodes=episodes, way=way)
        labels = torch.arange(way).repeat_interleave(shot)  # class-major, on the CPU
        per_support = way * shot
        return torch.stack(
            [
                self.match(
                    support[e * per_support : (e + 1) * per_support],
                    labels,
                    query[e * queries : (e + 1) * queries],
                    way=way,
                )
                for e in range(episodes)
            ]
        )  # (E, Q, N)

    def forward(self, support: Tensor, support_labels: Tensor, query: Tensor) -> Tensor:
        """support (N*K, T, P, D), support_labels (N*K,) in 0..N-1, query (Q, T, P, D) -> (Q, N)."""
        return self.match(self.embed(support), support_labels, self.embed(query))
