"""Synthetic feature stores for tests and benchmarks: no videos, no backbone, written in seconds.

Each class has a random signature in the first `signal_dims` channels; the other channels carry a
per-video nuisance vector, constant over frames and patches and larger than the signal. Pooled
distances (ProtoNet, or an untrained head) are dominated by the nuisance, so they score near
chance; a head that learns to project the nuisance away separates the classes, also unseen ones,
since every class shares the same informative channels. Training has something to learn.

With `relu` the features are clipped at 0 like a CNN's last activations (about half of the values
are 0), so a benchmark's compressed chunks are about as large as real ones. With `scale` and
`shared` they become scale·f + shared·s, s a fixed positive vector over the channels that every
video shares: the small activations dominated by a common component that a random-init CNN gives
(on which SA-CT at the paper formula does not train, docs/MODEL.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from sact.data.split_lists import SPLIT_PARTS
from sact.extract.views import parse_view
from sact.store.feature_set import VideoRecord
from sact.store.zarr_store import FeatureSetWriter, ShardResult, open_root


def video_id(label: str, number: int) -> str:
    return f"{label}_v{number:03d}"


def class_names(count: int) -> list[str]:
    return [f"class_{number:03d}" for number in range(count)]


def synthetic_features(
    rng: np.random.Generator,
    signatures: np.ndarray,
    labels: np.ndarray,
    *,
    frames: int,
    patches: int,
    dim: int,
    nuisance: float,
    noise: float,
    relu: bool = False,
    scale: float = 1.0,
    shared: np.ndarray | None = None,
) -> np.ndarray:
    """(n, T, P, D) float16 features of videos of classes `labels` (rows of `signatures`)."""
    count, signal_dims = len(labels), signatures.shape[1]
    features = noise * rng.standard_normal((count, frames, patches, dim), dtype=np.float32)
    features[..., :signal_dims] += signatures[labels][:, None, None, :]  # (n, 1, 1, signal)
    per_video = nuisance * rng.standard_normal((count, 1, 1, dim - signal_dims), dtype=np.float32)
    features[..., signal_dims:] += per_video  # (n, T, P, D - signal)
    if relu:
        np.maximum(features, 0, out=features)
    features *= scale
    if shared is not None:
        features += shared  # (D,), the same for every video, frame and patch
    return features.astype(np.float16)


def write_synthetic_store(
    location: str | Path,
    *,
    name: str = "synthetic",
    classes: int = 12,
    videos_per_class: int = 8,
    frames: int = 4,
    grid: tuple[int, int] = (2, 2),
    dim: int = 16,
    signal_dims: int = 4,
    nuisance: float = 3.0,
    noise: float = 0.5,
    shard_size: int = 16,
    seed: int = 0,
    failed: Sequence[str] = (),
    pending_shards: Sequence[int] = (),
    split: str | None = None,
    relu: bool = False,
    scale: float = 1.0,
    shared: float = 0.0,
    views: Sequence[str] = (),
    shuffled: bool = False,
) -> str:
    """Write a labelled feature set of `classes` x `videos_per_class` synthetic videos, class by
    class, or with `shuffled` in a random order: as `sact extract` stores a flat folder in name
    order (SSv2's `<id>.webm`), where a split's videos are spread over every shard.

    `failed` video ids are recorded as failed; `pending_shards` are left unwritten (not done);
    `split` is recorded in the feature set's attrs as stage 1 does. Each of `views` (view specs,
    extract/views.py) is stored too: the canonical features plus noise of its own, as another crop
    of the same video would differ.
    """
    rng = np.random.default_rng(seed)
    labels = class_names(classes)
    records = [
        VideoRecord(
            video_id=video_id(label, n), path=f"{label}/{video_id(label, n)}.mp4", label=label
        )
        for label in labels
        for n in range(videos_per_class)
    ]
    class_of = np.repeat(np.arange(classes), videos_per_class)
    if shuffled:  # its own generator, so that stores without it keep the features they had
        order = np.random.default_rng([seed, 2]).permutation(len(records))
        records, class_of = [records[number] for number in order], class_of[order]
    signal_dims = min(signal_dims, dim)
    signatures = rng.standard_normal((classes, signal_dims)).astype(np.float32)
    # its own generator, so that stores without it keep the features they always had
    common = shared * (0.5 + np.random.default_rng([seed, 1]).random(dim, dtype=np.float32))
    root = open_root(str(location), mode="a")
    identity = {"backbone": "synthetic", "frames": frames, "dim": dim, "seed": seed}
    provenance = {"split": split} if split else {}
    writer = FeatureSetWriter.create_or_open(
        root,
        name,
        identity=identity,
        provenance=provenance,
        videos=records,
        frames=frames,
        patches=grid[0] * grid[1],
        dim=dim,
        grid=grid,
        shard_size=shard_size,
    )
    view_writers = [
        writer.add_view(spec.name, spec=spec.to_json(), provenance={})
        for spec in map(parse_view, views)
    ]
    for shard in range(writer.num_shards()):
        start, end = writer.shard_bounds(shard)
        features = synthetic_features(
            rng,
            signatures,
            class_of[start:end],
            frames=frames,
            patches=grid[0] * grid[1],
            dim=dim,
            nuisance=nuisance,
            noise=noise,
            relu=relu,
            scale=scale,
            shared=common if shared else None,
        )
        if shard in pending_shards:
            continue
        errors = ["decode failed" if r.video_id in failed else "" for r in records[start:end]]
        result = ShardResult(
            features=features,
            frame_index=np.tile(np.arange(frames, dtype=np.int32), (end - start, 1)),
            num_frames=np.full(end - start, frames, dtype=np.int32),
            errors=errors,
        )
        writer.write_shard(shard, result)
        for number, view in enumerate(view_writers):
            view_rng = np.random.default_rng([seed, shard, number])
            shifted = features + noise * view_rng.standard_normal(features.shape)
            view.write_shard(
                shard,
                replace(
                    result,
                    features=shifted.astype(np.float16),
                    crop_origin=np.zeros((end - start, 2), dtype=np.int32),
                ),
            )
    return str(location)


def write_split_lists(folder: Path, classes: int, videos_per_class: int, parts: dict[str, range]):
    """Split lists ({train,val,test}list01.txt) naming the synthetic store's videos by class."""
    folder.mkdir(parents=True, exist_ok=True)
    names = class_names(classes)
    for part in SPLIT_PARTS:
        lines = [
            f"{names[c]}/{video_id(names[c], n)}"
            for c in parts[part]
            for n in range(videos_per_class)
        ]
        (folder / f"{part}list01.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
