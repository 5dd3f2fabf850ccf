"""`sact explain`: draw where SA-CT's cross-attention lands, for one query and one support video.

The glue between the two stages lives here, outside `fewshot/`: the weights come from a trained
run and the cached features (fewshot/attention.py), the pictures from the source videos recorded
in the feature set (extract/decode.py), cropped exactly as the backbone saw them so the patch grid
lies on them. Stored paths are data: each is resolved inside the videos folder the feature set
records, and refused if it leaves it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch

from sact.common.options import Checked, checked
from sact.extract.backbone import Preprocessing
from sact.extract.decode import DecodeError, read_frames
from sact.extract.videos import VideoDiscoveryError, resolve_video_path
from sact.fewshot.attention import attention_weights, draw_attention, focused_patches
from sact.fewshot.checkpoints import check_compatible
from sact.fewshot.config import ExplainConfig, ExplainError
from sact.fewshot.features import segment_frames
from sact.fewshot.model import SACT
from sact.fewshot.selection import select_checkpoint
from sact.store.backends import FeatureSet, open_feature_set

RESIZE_CROP = re.compile(r"^resize shorter side to (\d+), center crop (\d+)x(\d+)$")


def is_positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def preprocessing_of(feature_set: FeatureSet) -> Preprocessing:
    """The resize and crop stage 1 applied, rebuilt from the feature set's attrs (docs/STORE.md):
    the numbers `resize_to` and `input_size`; a store written before `resize_to` was recorded
    has the rule only in words, `resize_crop`."""
    attrs = feature_set.attrs
    resize_to, size = attrs.get("resize_to"), attrs.get("input_size")
    if resize_to is None:
        match = RESIZE_CROP.match(str(attrs.get("resize_crop", "")))
        if match is not None:
            resize_to, size = int(match.group(1)), int(match.group(2))
    if not (is_positive_int(resize_to) and is_positive_int(size)):
        raise ExplainError(
            f"feature set {feature_set.name} does not record its resize/crop rule in a known form"
        )
    return Preprocessing(
        size=size,
        resize_to=resize_to,
        interpolation=str(attrs.get("interpolation", "bicubic")),
        mean=tuple(attrs["mean"]),
        std=tuple(attrs["std"]),
    )


def video_index(feature_set: FeatureSet, video_id: str) -> int:
    index = feature_set.index_of().get(video_id)
    if index is None:
        raise ExplainError(f"video {video_id!r} is not in feature set {feature_set.name}")
    if not feature_set.usable[index]:
        reason = feature_set.errors[index] or "not extracted yet"
        raise ExplainError(f"video {video_id!r} has no features: {reason}")
    return index


def source_frames(feature_set: FeatureSet, index: int, frames: np.ndarray) -> np.ndarray:
    """Stored frames ``frames`` of video ``index`` as the backbone's crops: (len, S, S, 3) uint8."""
    videos_dir = feature_set.attrs.get("videos_dir")
    if not videos_dir:
        raise ExplainError(f"feature set {feature_set.name} does not record its videos folder")
    source_index = feature_set.read_frame_index([index])[0][frames]  # (len,)
    try:
        path = resolve_video_path(Path(videos_dir), feature_set.paths[index])
        pixels = read_frames(path, source_index)  # (len, H, W, 3)
    except (VideoDiscoveryError, DecodeError, OSError) as error:
        raise ExplainError(
            f"cannot read the frames of {feature_set.video_ids[index]!r} from {videos_dir}: {error}"
        ) from error
    crops = preprocessing_of(feature_set).resize_and_crop(pixels)  # (len, 3, S, S)
    return crops.permute(0, 2, 3, 1).numpy()  # (len, S, S, 3)


def explain(config: ExplainConfig | Checked[ExplainConfig]) -> Path:
    """Write the attention figure of ``config.query`` against ``config.support``; its path. A
    config the command line checked runs as it is."""
    config = checked(config).config
    checkpoint = select_checkpoint(Path(config.run), config.checkpoint).checkpoint
    if checkpoint.model != "sact":
        raise ExplainError(
            f"{config.run} trained a {checkpoint.model} model; the attention figure needs SA-CT"
        )
    feature_set = open_feature_set(config.feats or checkpoint.store, checkpoint.feature_set)
    check_compatible(checkpoint, feature_set)
    model = checkpoint.build()
    assert isinstance(model, SACT)
    query, support = (
        video_index(feature_set, config.query),
        video_index(feature_set, config.support),
    )

    # the frames the model reads (segment centers, as evaluation takes them)
    used = model.frames
    frames = segment_frames(feature_set.frames, used, 1)[0]  # (T,)
    features = torch.from_numpy(feature_set.read([support, query])[:, frames])  # (2, T, P, D)
    weights = attention_weights(model, features[0], features[1])  # (T', P, P)
    mixed = weights.shape[0]
    # With the TMixer on, mixed frame i blends all T frames (W5 maps T to T/2): no source frame
    # is "its" frame. The figure shows the first frame of the i-th pair, and says so.
    shown = np.arange(mixed) * (used // mixed)  # (T',) positions among the model's frames
    labels = (
        [f"mixed frame {i}\n(shows frame {s})" for i, s in enumerate(shown)]
        if mixed != used
        else [f"frame {i}" for i in range(mixed)]
    )
    count = min(config.patches, weights.shape[1])
    out = config.out or Path(config.run) / f"attention-{config.query}-{config.support}.png"
    return draw_attention(
        query_frames=source_frames(feature_set, query, frames[shown]),
        support_frames=source_frames(feature_set, support, frames[shown]),
        weights=weights,
        grid=model.grid,
        patches=focused_patches(weights, count),
        path=out,
        title=f"SA-CT cross-attention: query {config.query} → support {config.support}",
        frame_labels=labels,
    )
