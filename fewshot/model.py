"""SA-CT: the Spatial Alignment Cross Transformer on cached patch features.

The model follows docs/MODEL.md formula by formula, which also maps every formula to a parameter
name and a tensor shape. Vocabulary: N way, K shot, Q queries, T frames,
T' frames after the TMixer, P = h*w patches, D channels, d_k projection width.

Everything before the cross-attention depends on one video only, so the model is split in two:
`embed` (TMixer, CPE, projections; once per video) and `match` (attention and distance; once per
episode). `forward` is `match` of `embed`, and evaluation can embed a test split once and reuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sact.fewshot.config import DISTANCES
from sact.fewshot.heads import FewShotHead, VideoEmbedding, class_major, episode_shape
from sact.fewshot.precision import exact_float32, values_context


class TMixer(nn.Module):
    """Token mixing along frames, channel mixing along D; halves the frames.

    U = X + W2 σ(W1 X)   (frames)     V = U + W4 σ(W3 U)   (channels)
    Y = W6 σ(W5 V)       (frames, T -> T/2, no residual)   Z = Y + W8 σ(W7 Y)   (channels)

    The seed writes the last step as Z = Y + W8 σ(W7 U). U has T frames and Y has T/2, so the
    sum is only defined with Y: this module uses W7 Y (docs/MODEL.md, "The TMixer correction").
    """

    def __init__(self, *, dim: int, frames: int) -> None:
        super().__init__()
        if frames < 2 or frames % 2:
            raise ValueError(
                f"the TMixer halves the frames, so it needs an even T >= 2, got T={frames}"
                " (use an even number of frames, or tmixer=False)"
            )
        half = frames // 2
        self.w1 = nn.Linear(frames, frames)
        self.w2 = nn.Linear(frames, frames)
        self.w3 = nn.Linear(dim, dim)
        self.w4 = nn.Linear(dim, dim)
        self.w5 = nn.Linear(frames, half)
        self.w6 = nn.Linear(half, half)
        self.w7 = nn.Linear(dim, dim)
        self.w8 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # frame mixing runs with frames last: (B, T, P, D) -> (B, P, D, T)
        x = x.permute(0, 2, 3, 1)  # (B, P, D, T)
        u = x + self.w2(F.relu(self.w1(x)))  # (B, P, D, T)
        u = u.permute(0, 3, 1, 2)  # (B, T, P, D)
        v = u + self.w4(F.relu(self.w3(u)))  # (B, T, P, D)
        v = v.permute(0, 2, 3, 1)  # (B, P, D, T)
        y = self.w6(F.relu(self.w5(v)))  # (B, P, D, T/2)
        y = y.permute(0, 3, 1, 2)  # (B, T/2, P, D)
        return y + self.w8(F.relu(self.w7(y)))  # (B, T/2, P, D)


@dataclass(frozen=True)
class SACTEmbedding(VideoEmbedding):
    """What `SACT.match` needs of each video, whether it ends up support or query."""

    support_keys: Tensor  # (B, T', P, d_k)  LN(W_s f)
    query_keys: Tensor  # (B, T', P, d_k)  LN(W_q f)
    values: Tensor  # (B, T', P, d_k)  W_v Φ


class SACT(FewShotHead[SACTEmbedding]):
    """Spatial Alignment Cross Transformer on cached features (B, T, P, D).

    `SACT(...)` is the sact default, what `sact train` trains: the paper's formula with two
    deviations (`input_norm`, `distance="sum"`) without which it can stall or collapse;
    `SACT.paper(...)` is the paper's formula as the seed's code computes it (docs/MODEL.md,
    "Training at the seed's scale").
    """

    def __init__(
        self,
        *,
        dim: int,
        frames: int,
        grid: tuple[int, int] | int,
        d_k: int = 1152,
        tmixer: bool = True,
        cpe: bool = True,
        input_norm: bool = True,
        distance: str = "sum",
    ) -> None:
        super().__init__(dim=dim, frames=frames, grid=grid)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        self.d_k, self.distance = d_k, distance
        # the two deviations from the paper's formula (off in `SACT.paper`)
        self.input_norm = nn.LayerNorm(dim) if input_norm else None
        self.tmixer = TMixer(dim=dim, frames=frames) if tmixer else None
        self.cpe = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim) if cpe else None
        self.to_support = nn.Linear(dim, d_k)
        self.to_query = nn.Linear(dim, d_k)
        self.to_value = nn.Linear(dim, d_k)
        self.norm_support = nn.LayerNorm(d_k)
        self.norm_query = nn.LayerNorm(d_k)

    @classmethod
    def paper(
        cls,
        *,
        dim: int,
        frames: int,
        grid: tuple[int, int] | int,
        d_k: int = 1152,
        tmixer: bool = True,
        cpe: bool = True,
    ) -> SACT:
        """The paper's formula as the seed's code computes it: no LayerNorm on the input features,
        the distance of the frame sums over T'² (`sact train --no-input-norm --distance seed`)."""
        return cls(
            dim=dim,
            frames=frames,
            grid=grid,
            d_k=d_k,
            tmixer=tmixer,
            cpe=cpe,
            input_norm=False,
            distance="seed",
        )

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "d_k": self.d_k,
            "tmixer": self.tmixer is not None,
            "cpe": self.cpe is not None,
            "input_norm": self.input_norm is not None,
            "distance": self.distance,
        }

    def positional(self, phi: Tensor) -> Tensor:
        """f = Φ + CPE(Φ): a depthwise 3x3 conv over each frame's h x w grid (patches row-major);
        f = Φ with the CPE off."""
        if self.cpe is None:
            return phi
        b, t, p, d = phi.shape
        h, w = self.grid
        grid = phi.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # (B*T', D, h, w)
        encoding = self.cpe(grid).permute(0, 2, 3, 1).reshape(b, t, p, d)  # (B, T', P, D)
        return phi + encoding

    def embed(self, videos: Tensor) -> SACTEmbedding:
        """Per-video part: TMixer, CPE and the three projections. videos (B, T, P, D).

        The values' path (input norm, TMixer, W_v) runs in the weights' precision whatever
        autocast chose, unless the precision policy puts it under autocast too (bf16,
        fewshot/precision.py): `match` subtracts sums of values that nearly cancel, and bfloat16
        values flipped ~1% of SA-CT's predictions on the demo's features even with `match` in
        float32; the keys only shape the attention and stay under autocast (docs/MODEL.md,
        "Precision").
        """
        self.check_videos(videos)
        with values_context(videos.device):
            x = videos.to(self.to_value.weight.dtype)  # cached features are float16
            if self.input_norm is not None:
                x = self.input_norm(x)  # (B, T, P, D), each patch over its D channels
            phi = self.tmixer(x) if self.tmixer is not None else x  # (B, T', P, D)
        f = self.positional(phi)  # (B, T', P, D)
        support_keys = self.norm_support(self.to_support(f))  # (B, T', P, d_k)
        query_keys = self.norm_query(self.to_query(f))  # (B, T', P, d_k)
        # after the keys: autograd sums the gradients into phi in this order, and a CPU run then
        # trains the same weights as before the values moved out of autocast
        with values_context(videos.device):
            values = self.to_value(phi)  # (B, T', P, d_k)
        return SACTEmbedding(support_keys=support_keys, query_keys=query_keys, values=values)

    @staticmethod
    def cross_attention(support_keys: Tensor, query_keys: Tensor) -> Tensor:
        """ã: softmax over (k, m) of a / √d_k, each query frame against the same support frame.

        support_keys (..., N, K, T', P, d_k), query_keys (..., Q, T', P, d_k) -> (..., N, Q, P,
        T', K, P), with the same leading episode dims (if any) on both. `match` uses it, and so
        does the attention figure (fewshot/attention.py).
        """
        shot, n_patches, d_k = (
            support_keys.shape[-4],
            support_keys.shape[-2],
            support_keys.shape[-1],
        )
        key_dtype = torch.promote_types(support_keys.dtype, query_keys.dtype)
        # scale before the product: in float16, d_k-long dot products of LN outputs can overflow
        q_keys = query_keys.to(key_dtype) / math.sqrt(d_k)
        # a[c, q, p, i, k, m]: query patch p of frame i against support patch m of frame i, shot k
        scores = torch.einsum("...nkimd,...qipd->...nqpikm", support_keys.to(key_dtype), q_keys)
        # softmax over all (k, m) of the class, in at least float32 whatever autocast chose
        scores = scores.flatten(-2)  # (..., N, Q, P, T', K, P) -> (..., N, Q, P, T', K*P)
        attention = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1)
        return attention.unflatten(-1, (shot, n_patches))  # (..., N, Q, P, T', K, P)

    def match(
        self,
        support: SACTEmbedding,
        support_labels: Tensor,
        query: SACTEmbedding,
        *,
        way: int | None = None,
    ) -> Tensor:
        """Per-episode part: frame-aligned spatial cross-attention and distance. Logits (Q, N)."""
        support, way, _ = class_major(support, support_labels, way)
        return self.match_episodes(support, query, episodes=1, way=way)[0]

    def match_episodes(
        self,
        support: SACTEmbedding,
        query: SACTEmbedding,
        *,
        episodes: int,
        way: int,
        fused: bool = False,
    ) -> Tensor:
        """`FewShotHead.match_episodes` in one batched call. `fused` computes the attention with
        scaled_dot_product_attention instead of explicit scores (same logits within float32
        rounding; more memory at d_k > K·P, docs/MODEL.md)."""
        n_frames, n_patches, d_k = support.values.shape[1:]
        shot, queries = episode_shape(len(support), len(query), episodes=episodes, way=way)
        # The distance subtracts two sums of T' values that nearly cancel: in bfloat16 their
        # rounding decides close predictions. So match runs in (at least) float32 whatever
        # autocast chose, and in IEEE float32 whatever TF32 switch the precision policy set; keys
        # may arrive in bfloat16 (they only shape the attention weights).
        exact = torch.promote_types(support.values.dtype, torch.float32)
        with exact_float32(support.values.device):
            # (E*N*K, T', P, d_k) -> (E, N, K, T', P, d_k), class-major
            grouped = (episodes, way, shot, n_frames, n_patches, d_k)
            s_keys = support.support_keys.to(exact).reshape(grouped)
            s_values = support.values.to(exact).reshape(grouped)
            # (E*Q, T', P, d_k) -> (E, Q, T', P, d_k)
            q_keys = query.query_keys.to(exact).reshape(episodes, queries, *grouped[3:])
            attend = self.fused_prototypes if fused else self.prototypes
            summed_prototype = attend(s_keys, s_values, q_keys)  # (E, N, Q, P, d_k)
            summed_query = query.values.to(exact).reshape(episodes, queries, *grouped[3:])
            summed_query = summed_query.sum(dim=2)  # (E, Q, P, d_k)
            diff = (summed_prototype - summed_query[:, None]) / n_frames**2  # (E, N, Q, P, d_k)
            distance = diff.pow(2).sum(dim=-1).mean(dim=-1)  # (E, N, Q)
        return -distance.transpose(1, 2) * self.distance_scale(n_frames)  # (E, Q, N)

    def distance_scale(self, n_frames: int) -> int:
        """The seed divides the frame sum by T'² inside the square: "seed" keeps it (1), "mean"
        divides by T' instead (T'²: the distance of the frame means), "sum" not at all (T'^4)."""
        return {"seed": 1, "mean": n_frames**2, "sum": n_frames**4}[self.distance]

    @classmethod
    def prototypes(cls, s_keys: Tensor, s_values: Tensor, q_keys: Tensor) -> Tensor:
        """Σ_i t^c_ip from explicit attention weights: one contraction over (i, k, m), so t^c_ip
        itself is never materialised. s_* (E, N, K, T', P, d_k), q_keys (E, Q, T', P, d_k)
        -> (E, N, Q, P, d_k)."""
        attention = cls.cross_attention(s_keys, q_keys)  # (E, N, Q, P, T', K, P)
        return torch.einsum("...nqpikm,...nkimd->...nqpd", attention, s_values)

    @staticmethod
    def fused_prototypes(s_keys: Tensor, s_values: Tensor, q_keys: Tensor) -> Tensor:
        """Σ_i t^c_ip through scaled_dot_product_attention: per class and frame i, the query
        patches of frame i attend over the K·P support patches of frame i. The scores stay in the
        kernel, but each frame's t^c_ip comes out (d_k wide, against K·P for the scores).
        Shapes as `prototypes`."""
        episodes, way, _, n_frames, n_patches, d_k = s_keys.shape
        queries = q_keys.shape[1]

        def frame_major(field: Tensor) -> Tensor:
            # (E, N, K, T', P, d_k) -> (E*N, T', K*P, d_k): frame i of every shot of a class
            return field.transpose(2, 3).reshape(episodes * way, n_frames, -1, d_k)

        # (E, Q, T', P, d_k) -> (E, T', Q*P, d_k): frame i of every query, then once per class
        per_frame = q_keys.transpose(1, 2).reshape(episodes, n_frames, queries * n_patches, d_k)
        per_frame = per_frame.repeat_interleave(way, dim=0)  # (E*N, T', Q*P, d_k)
        attended = F.scaled_dot_product_attention(
            per_frame, frame_major(s_keys), frame_major(s_values)
        )  # (E*N, T', Q*P, d_k): t^c_ip
        return attended.sum(dim=1).reshape(episodes, way, queries, n_patches, d_k)
