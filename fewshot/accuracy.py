"""Few-shot accuracy on cached features: embed each video once, match per episode, mean ± 95% CI.

Every video a set of episodes uses is embedded once (`model.embed`: everything per video), and
only `model.match` (the cross-attention and the distance) runs per episode. bench/evaluate.py
measures this against a full forward per episode. An episode's accuracy is its share of correctly
classified queries; a setting reports the mean over its episodes ± the half-width of the 95%
confidence interval, 1.96·std/√n (README.md, "Stage 2").

Training scores its val episodes with this module, `sact evaluate` (fewshot/evaluation.py) its test
episodes, and `explain` nothing: it reads one pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields

import numpy as np
import torch
from rich.console import Console

from sact.common.progress import progress_display
from sact.fewshot.episodes import Episode
from sact.fewshot.features import (
    Prefetcher,
    SplitFeatures,
    segment_frames,
    to_device,
)
from sact.fewshot.heads import FewShotHead, VideoEmbedding

Z_95 = 1.96
# Episodes per `match_episodes` call: their gathered embeddings take at most this much memory
# (a GPU: this share of its free memory; it has tens of GB), and never more than this many. A
# call's peak is a few times its gathered embeddings (float32 copies of them in `match`).
MATCH_BYTES_ON_HOST = 256 * 1024**2
MATCH_SHARE_OF_FREE_GPU = 1 / 16
MAX_EPISODES_PER_CALL = 256


def concat_embeddings(parts: Sequence[VideoEmbedding]) -> VideoEmbedding:
    """Join per-batch embeddings along the video dim (every field is a tensor or tuple of them)."""
    first = parts[0]

    def join(name: str):
        values = [getattr(part, name) for part in parts]
        if isinstance(values[0], tuple):
            return tuple(torch.cat(group) for group in zip(*values, strict=True))
        return torch.cat(values)

    return type(first)(**{field.name: join(field.name) for field in fields(first)})


@torch.no_grad()
def embed_videos(
    model: FewShotHead,
    features: SplitFeatures,
    positions: np.ndarray,
    *,
    batch_size: int,
    autocast: AbstractContextManager | None = None,
    workers: int = 4,
    console: Console | None = None,
) -> tuple[VideoEmbedding, np.ndarray]:
    """Embed the pool videos at `positions` once, at segment centers, in store order.

    In store order a batch's videos from the store are runs of consecutive rows, each run one
    read, and the store's shards are read front to back, each video once; `workers` threads read
    the batches ahead while the model embeds the one before (none when every video is on the
    device). A video's embedding does not depend on the batch it is in, so the order changes no
    result. Returns the embedding and `row_of` (len(pool),): the embedding row of each pool
    position (-1 where not embedded).
    """
    model.eval()
    autocast = autocast or nullcontext()
    stored = features.feature_set.frames
    positions = np.asarray(positions, dtype=np.int64)
    in_store_order = positions[np.argsort(features.rank[positions], kind="stable")]
    batches = [
        in_store_order[i : i + batch_size] for i in range(0, len(in_store_order), batch_size)
    ]

    def load(batch: np.ndarray) -> torch.Tensor:
        return features.videos(batch, segment_frames(stored, features.frames, len(batch)))

    loaded = (
        map(load, batches)
        if features.in_memory
        else Prefetcher(workers=workers, depth=2 * workers).map(load, batches)
    )
    parts = []
    with progress_display(console) as progress:
        bar = progress.add_task(f"embedding {features.pool.part} videos", total=len(positions))
        for videos in loaded:
            with autocast:
                parts.append(model.embed(videos))  # (B, ...) per field
            progress.advance(bar, len(videos))
    row_of = np.full(len(features.pool), -1, dtype=np.int64)
    row_of[in_store_order] = np.arange(len(in_store_order))
    return concat_embeddings(parts), row_of


def episodes_per_call(embedding: VideoEmbedding, videos_per_episode: int) -> int:
    """How many episodes `match_episodes` takes at once: their gathered embeddings within a fixed
    share of the memory (on a GPU, of its free memory), so one call's temporaries stay small."""
    device = embedding.device
    budget = (
        torch.cuda.mem_get_info(device)[0] * MATCH_SHARE_OF_FREE_GPU
        if device.type == "cuda"
        else MATCH_BYTES_ON_HOST
    )
    per_episode = embedding.bytes_per_video() * videos_per_episode
    return max(1, min(MAX_EPISODES_PER_CALL, int(budget // per_episode)))


def episode_groups(
    episodes: Sequence[Episode], embedding: VideoEmbedding
) -> Iterator[Sequence[Episode]]:
    """Runs of consecutive episodes of one N-way K-shot Q-query shape, at most a call's worth."""
    limits: dict[tuple[int, int, int], int] = {}  # episodes per call, by shape
    start = 0
    while start < len(episodes):
        first = episodes[start]
        shape = (first.way, first.shot, first.queries)
        if shape not in limits:
            limits[shape] = episodes_per_call(embedding, len(first.support) + len(first.query))
        limit = limits[shape]
        stop = start + 1
        while stop < len(episodes) and stop - start < limit:
            episode = episodes[stop]
            if (episode.way, episode.shot, episode.queries) != shape:
                break
            stop += 1
        yield episodes[start:stop]
        start = stop


def match_group(
    model: FewShotHead, embedding: VideoEmbedding, row_of: np.ndarray, group: Sequence[Episode]
) -> torch.Tensor:
    """Logits (E, Q, N) of same-shaped episodes in one `match_episodes` call."""
    support_rows = np.concatenate([row_of[episode.support] for episode in group])
    query_rows = np.concatenate([row_of[episode.query] for episode in group])
    rows = to_device(np.concatenate([support_rows, query_rows]), embedding.device)  # one copy
    support, query = embedding[rows[: len(support_rows)]], embedding[rows[len(support_rows) :]]
    return model.match_episodes(support, query, episodes=len(group), way=group[0].way)


@torch.no_grad()
def episode_logits(
    model: FewShotHead,
    embedding: VideoEmbedding,
    row_of: np.ndarray,
    episodes: Sequence[Episode],
    *,
    autocast: AbstractContextManager | None = None,
) -> Iterator[torch.Tensor]:
    """Logits (N*Q, N) of each episode, from the embedded videos: only `match` runs here, for
    many episodes per call (`episode_groups`)."""
    model.eval()
    autocast = autocast or nullcontext()
    for group in episode_groups(episodes, embedding):
        with autocast:
            yield from match_group(model, embedding, row_of, group)


@torch.no_grad()
def episode_accuracies(
    model: FewShotHead,
    embedding: VideoEmbedding,
    row_of: np.ndarray,
    episodes: Sequence[Episode],
    *,
    autocast: AbstractContextManager | None = None,
) -> np.ndarray:
    """Each episode's share of correctly classified queries: (E,). The counts stay on the device
    until every episode is scored, then come back in one copy: no device sync per episode."""
    return averaged_accuracies(model, [(embedding, row_of)], episodes, autocast=autocast)


@torch.no_grad()
def averaged_accuracies(
    model: FewShotHead,
    embedded: Sequence[tuple[VideoEmbedding, np.ndarray]],
    episodes: Sequence[Episode],
    *,
    autocast: AbstractContextManager | None = None,
) -> np.ndarray:
    """`episode_accuracies` with each episode's logits averaged over several embeddings of its
    videos, (embedding, row_of) each: the stored views of test-time augmentation, support and
    queries in the same view. Still one device read for all the episodes."""
    model.eval()
    autocast = autocast or nullcontext()
    correct = []
    for group in episode_groups(episodes, embedded[0][0]):
        labels = np.stack([episode.query_labels() for episode in group])  # (E, Q)
        on_device = to_device(labels, embedded[0][0].device)
        with autocast:
            per_view = [
                match_group(model, embedding, row_of, group) for embedding, row_of in embedded
            ]  # each (E, Q, N)
        if len(per_view) == 1:
            logits = per_view[0]
        else:
            logits = torch.stack([view_logits.float() for view_logits in per_view]).mean(dim=0)
        correct.append((logits.argmax(dim=-1) == on_device).sum(dim=-1))  # (E,)
    if not correct:
        return np.empty(0)
    queries = np.array([len(episode.query) for episode in episodes])
    return torch.cat(correct).cpu().numpy() / queries


def score_episodes(
    model: FewShotHead,
    views: Sequence[SplitFeatures],
    episode_lists: Sequence[Sequence[Episode]],
    *,
    batch_size: int,
    autocast: AbstractContextManager | None = None,
    workers: int = 4,
    console: Console | None = None,
) -> list[np.ndarray]:
    """Per-episode accuracies (E,) of each list of episodes; every video used embedded once per
    view. With several `views` (the same pool read in several stored views: test-time
    augmentation) each episode's logits are averaged over them, the support and the queries of
    each view read in that view."""
    positions = np.unique(
        np.concatenate([np.r_[e.support, e.query] for episodes in episode_lists for e in episodes])
    )
    embedded = [
        embed_videos(
            model,
            features,
            positions,
            batch_size=batch_size,
            autocast=autocast,
            workers=workers,
            console=console,
        )
        for features in views
    ]
    return [
        averaged_accuracies(model, embedded, episodes, autocast=autocast)
        for episodes in episode_lists
    ]


def mean_and_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval, 1.96·std/√n."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(Z_95 * values.std() / math.sqrt(len(values)))
