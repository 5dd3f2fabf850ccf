"""The baselines: hand computations, a loop reference for TRX, what the learned ones keep, and the
shared model interface."""

from __future__ import annotations

import math
import os
from itertools import combinations

import pytest
import torch

from sact.fewshot import (
    TRX,
    GridTRX,
    NearestMean,
    ProtoNet,
    ProtoNetEmbedding,
    TRXEmbedding,
    create_model,
    model_kinds,
)

DIM, FRAMES, GRID, D_K = 16, 4, (2, 2), 8
PATCHES = GRID[0] * GRID[1]


def make_episode(*, way: int = 3, shot: int = 2, queries: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(way * shot, FRAMES, PATCHES, DIM, generator=generator)
    labels = torch.arange(way).repeat(shot)  # shots interleaved: 0, 1, 2, 0, 1, 2
    query = torch.randn(queries, FRAMES, PATCHES, DIM, generator=generator)
    return support.double(), labels, query.double()


def make_trx(seed: int = 0) -> TRX:
    torch.manual_seed(seed)
    model = TRX(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).double().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.heads:
            head.norm_key.weight.copy_(1 + 0.5 * torch.randn(D_K, generator=generator))
            head.norm_key.bias.copy_(torch.randn(D_K, generator=generator))
    return model


def test_nearest_mean_equals_hand_computation() -> None:
    support, labels, query = make_episode()
    model = NearestMean(dim=DIM, frames=FRAMES, grid=GRID)
    assert list(model.parameters()) == []
    logits = model(support, labels, query)
    for q in range(len(query)):
        pooled = query[q].mean(dim=(0, 1))
        for c in range(3):
            shots = [support[k].mean(dim=(0, 1)) for k in range(len(labels)) if labels[k] == c]
            prototype = sum(shots) / len(shots)
            expected = -((pooled - prototype) ** 2).sum()
            assert abs(logits[q, c] - expected) <= 1e-12 * abs(expected)


def test_nearest_mean_embed_match_and_float16() -> None:
    support, labels, query = make_episode()
    model = NearestMean(dim=DIM, frames=FRAMES, grid=2)
    pool = torch.cat([support, query])
    embedded = model.embed(pool)
    assert isinstance(embedded, ProtoNetEmbedding) and len(embedded) == 11
    indexed = model.match(embedded[torch.arange(6)], labels, embedded[6:])
    torch.testing.assert_close(indexed, model(support, labels, query), rtol=1e-12, atol=1e-12)
    half = model(support.half(), labels, query.half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert create_model("nearest-mean", **model.config()).config() == model.config()


def reference_trx(model: TRX, support, labels, query) -> torch.Tensor:
    """TRX's own per-class loop, one query tuple at a time."""

    def tuples(video: torch.Tensor, head) -> tuple[list, list]:
        frames = video.mean(dim=1) + model.positional.encoding.double()  # (T, D)
        keys, values = [], []
        for combo in combinations(range(FRAMES), len(head.tuples[0])):
            concatenated = torch.cat([frames[i] for i in combo])
            keys.append(head.norm_key(head.to_key(concatenated)))
            values.append(head.to_value(concatenated))
        return keys, values

    way = int(labels.max()) + 1
    per_cardinality = []
    for head in model.heads:
        logits = torch.empty(len(query), way, dtype=torch.float64)
        for q, video in enumerate(query):
            q_keys, q_values = tuples(video, head)
            for c in range(way):
                shots = [tuples(support[k], head) for k in range(len(labels)) if labels[k] == c]
                s_keys = [key for keys, _ in shots for key in keys]
                s_values = [value for _, values in shots for value in values]
                distance = 0.0
                for q_key, q_value in zip(q_keys, q_values, strict=True):
                    scores = torch.stack([torch.dot(q_key, k) for k in s_keys]) / math.sqrt(D_K)
                    weights = torch.softmax(scores, dim=0)
                    prototype = sum(w * v for w, v in zip(weights, s_values, strict=True))
                    distance += ((q_value - prototype) ** 2).sum()
                logits[q, c] = -distance / len(q_keys)
        per_cardinality.append(logits)
    return sum(per_cardinality) / len(per_cardinality)


def test_trx_agrees_with_loop_reference() -> None:
    model = make_trx()
    support, labels, query = make_episode()
    with torch.no_grad():
        logits = model(support, labels, query)
        expected = reference_trx(model, support, labels, query)
    assert logits.shape == (5, 3)
    relative = (logits - expected).abs().max() / expected.abs().max()
    assert relative < 1e-9, f"relative error {relative:.2e}"


def test_trx_tuples_and_positional_encoding() -> None:
    model = make_trx()
    assert [len(head.tuples) for head in model.heads] == [6, 4]  # C(4, 2), C(4, 3)
    assert model.heads[1].tuples[0].tolist() == [0, 1, 2]
    encoding = model.positional.encoding
    assert encoding.shape == (FRAMES, DIM)
    assert torch.allclose(encoding[0, 1::2], torch.full((DIM // 2,), 0.1).double())  # 0.1·cos(0)
    assert torch.allclose(encoding[1, 0], torch.tensor(0.1 * math.sin(1.0)).double())


def test_trx_shot_order_and_relabelling() -> None:
    model = make_trx()
    support, labels, query = make_episode()
    shuffle = torch.randperm(len(labels), generator=torch.Generator().manual_seed(4))
    relabel = torch.tensor([1, 2, 0])
    with torch.no_grad():
        before = model(support, labels, query)
        shuffled = model(support[shuffle], labels[shuffle], query)
        relabelled = model(support, relabel[labels], query)
    torch.testing.assert_close(shuffled, before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(relabelled[:, relabel], before, rtol=1e-12, atol=1e-12)


def test_trx_embed_once_then_match_equals_forward() -> None:
    model = make_trx()
    support, labels, query = make_episode()
    pool = torch.cat([query, support])
    with torch.no_grad():
        embedded = model.embed(pool)
        assert isinstance(embedded, TRXEmbedding) and len(embedded) == 11
        direct = model(support, labels, query)
        indexed = model.match(embedded[torch.arange(5, 11)], labels, embedded[:5])
    torch.testing.assert_close(indexed, direct, rtol=1e-12, atol=1e-12)


def test_trx_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = TRX(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K)  # train mode: dropout on
    support, labels, query = make_episode()
    support, query = support.float(), query.float()
    targets = torch.arange(len(query)) % 3
    torch.nn.functional.cross_entropy(model(support, labels, query), targets).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_trx_config_rebuilds_and_rejects_too_few_frames() -> None:
    model = TRX(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K, cardinalities=(2,))
    rebuilt = create_model("trx", **model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match="T >= 3"):
        TRX(dim=DIM, frames=2, grid=GRID, d_k=D_K)


@pytest.mark.parametrize("kind", sorted(kind.name for kind in model_kinds()))
def test_every_model_is_built_and_called_the_same_way(kind: str) -> None:
    model = create_model(kind, dim=DIM, frames=FRAMES, grid=GRID).eval()
    support, labels, query = make_episode()
    support, query = support.float(), query.float()
    with torch.no_grad():
        logits = model(support, labels, query)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", sorted(kind.name for kind in model_kinds()))
def test_every_model_matches_many_episodes_in_one_call(kind: str) -> None:
    """`match_episodes` (batched for SA-CT, episode by episode by default) equals `match`."""
    model = create_model(kind, dim=DIM, frames=FRAMES, grid=GRID).eval()
    generator = torch.Generator().manual_seed(4)
    episodes, way, shot, queries = 3, 3, 2, 2
    support = torch.randn(
        episodes * way * shot, FRAMES, GRID[0] * GRID[1], DIM, generator=generator
    )
    query = torch.randn(episodes * queries, FRAMES, GRID[0] * GRID[1], DIM, generator=generator)
    labels = torch.arange(way).repeat_interleave(shot)
    with torch.no_grad():
        s_emb, q_emb = model.embed(support), model.embed(query)
        batched = model.match_episodes(s_emb, q_emb, episodes=episodes, way=way)
        for e in range(episodes):
            one = model.match(
                s_emb[e * way * shot : (e + 1) * way * shot],
                labels,
                q_emb[e * queries : (e + 1) * queries],
                way=way,
            )
            torch.testing.assert_close(batched[e], one, rtol=1e-5, atol=1e-6)


def test_protonet_pools_a_learned_per_patch_embedding() -> None:
    torch.manual_seed(0)
    model = ProtoNet(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).double()
    support, labels, query = make_episode()
    with torch.no_grad():
        logits = model(support, labels, query)
        embedded = model.embed(torch.cat([support, query]))
    encoder = model.encoder
    for q in range(len(query)):
        pooled = encoder.w2(torch.relu(encoder.w1(query[q]))).mean(dim=(0, 1))  # (d_k,)
        for c in range(3):
            shots = [support[k] for k in range(len(labels)) if labels[k] == c]
            prototype = sum(encoder.w2(torch.relu(encoder.w1(s))).mean(dim=(0, 1)) for s in shots)
            expected = -((pooled - prototype / len(shots)) ** 2).sum()
            assert abs(logits[q, c] - expected) <= 1e-9 * abs(expected)
    assert embedded.features.shape == (11, D_K)
    assert create_model("protonet", **model.config()).config() == model.config()


def test_grid_trx_keeps_where_things_are_and_trx_does_not() -> None:
    """Moving each frame's patches to other places changes GridTRX's logits, not TRX's."""
    support, labels, query = make_episode()
    swapped = query[:, :, torch.tensor([3, 2, 1, 0])]  # the 2x2 grid turned by 180 degrees
    torch.manual_seed(0)
    grid_trx = GridTRX(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).double().eval()
    with torch.no_grad():
        trx_change = make_trx()(support, labels, swapped) - make_trx()(support, labels, query)
        grid_change = grid_trx(support, labels, swapped) - grid_trx(support, labels, query)
    assert trx_change.abs().max() < 1e-12
    assert grid_change.abs().max() > 1e-3


def test_grid_trx_is_trx_on_pooled_cells() -> None:
    torch.manual_seed(0)
    model = GridTRX(dim=DIM, frames=FRAMES, grid=(4, 4), d_k=D_K, cells=2).double().eval()
    assert model.width == DIM // 4 and model.config()["width"] == DIM // 4
    videos = torch.randn(3, FRAMES, 16, DIM, dtype=torch.float64)
    encoded = model.encoder(videos).reshape(3, FRAMES, 4, 4, model.width)  # (B, T, h, w, width)
    top_left = encoded[:, :, :2, :2].mean(dim=(2, 3))  # (B, T, width)
    bottom_right = encoded[:, :, 2:, 2:].mean(dim=(2, 3))
    frames = model.frame_features(videos)  # (B, T, 1, 4·width)
    torch.testing.assert_close(frames[:, :, 0, : model.width], top_left)
    torch.testing.assert_close(frames[:, :, 0, -model.width :], bottom_right)
    rebuilt = create_model("trx-grid", **model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match=r"cells must lie in 1\.\.2"):
        GridTRX(dim=DIM, frames=FRAMES, grid=GRID, cells=3)


@pytest.mark.parametrize("kind", ["protonet", "trx-grid"])
def test_learned_baselines_get_gradients_everywhere(kind: str) -> None:
    torch.manual_seed(0)
    model = create_model(kind, dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K)
    support, labels, query = make_episode()
    support, query = support.float(), query.float()
    targets = torch.arange(len(query)) % 3
    torch.nn.functional.cross_entropy(model(support, labels, query), targets).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        pool = model.embed(torch.cat([support, query]))
        indexed = model.match(pool[torch.arange(6)], labels, pool[6:])
        torch.testing.assert_close(indexed, model(support, labels, query))


def test_grid_trx_gradients_are_bitwise_repeatable_on_many_threads() -> None:
    """CPU training is bitwise repeatable (README), trx-grid included. Its tuple heads gather
    every frame into many tuples, so the backward sums each frame's gradient over them; gathered
    by advanced indexing, the CPU backward did that sum with parallel atomic adds whose order, and
    so the last bits, changed from run to run. More busy threads than cores, splitting the 25
    support videos mid-video, make that order vary on every call."""
    threads = 4 * (os.cpu_count() or 1)
    torch.set_num_threads(threads)  # the conftest fixture restores it
    frames, videos = 8, 25  # 5-way 5-shot: 56 tuples of 3 frames a video
    # torch gives a thread at least 32,768 elements (its grain size): 25 * 56 * 3 * dim elements
    # of gathered tuples keep every thread busy
    dim = 8 * threads
    torch.manual_seed(0)
    model = GridTRX(dim=dim, frames=frames, grid=GRID, d_k=D_K).eval()  # eval: no dropout draws
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(videos, frames, PATCHES, dim, generator=generator)
    query = torch.randn(15, frames, PATCHES, dim, generator=generator)
    labels, targets = torch.arange(5).repeat_interleave(5), torch.arange(5).repeat_interleave(3)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(support, labels, query), targets)
        loss.backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    first = gradients()
    for _ in range(20):
        assert all(map(torch.equal, gradients(), first)), "gradients differ between two calls"
