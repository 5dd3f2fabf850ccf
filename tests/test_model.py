"""SACT against a loop-by-index reference written from docs/MODEL.md, and its invariances."""

from __future__ import annotations

import math

import pytest
import torch

from sact.fewshot import SACT, SACTEmbedding, create_model
from sact.fewshot.config import TrainConfig
from sact.fewshot.heads import class_major, group_by_class

DIM, FRAMES, GRID, D_K = 16, 4, (2, 2), 8
PATCHES = GRID[0] * GRID[1]
CONFIGS = [(True, True), (True, False), (False, True), (False, False)]  # (tmixer, cpe)
PAPER = {"input_norm": False, "distance": "seed"}  # SACT.paper's options


def make_model(*, tmixer: bool = True, cpe: bool = True, seed: int = 0, **options) -> SACT:
    """A SACT with every parameter random, LayerNorm affine parameters included: the paper
    formula, unless `options` change it."""
    torch.manual_seed(seed)
    model = SACT(
        dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K, tmixer=tmixer, cpe=cpe, **{**PAPER, **options}
    )
    generator = torch.Generator().manual_seed(seed)
    norms = [model.norm_support, model.norm_query]
    if model.input_norm is not None:
        norms.append(model.input_norm)
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator))
    return model


def make_episode(*, way: int = 3, shot: int = 2, queries: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(way * shot, FRAMES, PATCHES, DIM, generator=generator)
    labels = torch.arange(way).repeat(shot)  # shots interleaved: 0, 1, 2, 0, 1, 2
    query = torch.randn(queries, FRAMES, PATCHES, DIM, generator=generator)
    return support, labels, query


# ---- the reference: one index at a time, straight from the formulas ---------------------------


def affine(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return layer.weight @ x + layer.bias


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0)


def layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean()
    variance = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def reference_tmixer(model: SACT, x: torch.Tensor) -> torch.Tensor:
    """x (T, P, D) -> Z (T/2, P, D), one frame vector or one channel vector at a time."""
    m = model.tmixer
    t, p, d = x.shape
    u = torch.empty_like(x)
    for patch in range(p):
        for channel in range(d):
            column = x[:, patch, channel]
            u[:, patch, channel] = column + affine(m.w2, relu(affine(m.w1, column)))
    v = torch.empty_like(x)
    for frame in range(t):
        for patch in range(p):
            token = u[frame, patch]
            v[frame, patch] = token + affine(m.w4, relu(affine(m.w3, token)))
    y = x.new_empty(t // 2, p, d)
    for patch in range(p):
        for channel in range(d):
            y[:, patch, channel] = affine(m.w6, relu(affine(m.w5, v[:, patch, channel])))
    z = torch.empty_like(y)
    for frame in range(t // 2):
        for patch in range(p):
            token = y[frame, patch]  # the corrected formula: W7 takes Y, not U
            z[frame, patch] = token + affine(m.w8, relu(affine(m.w7, token)))
    return z


def reference_cpe(model: SACT, phi: torch.Tensor) -> torch.Tensor:
    """f = Φ + depthwise 3x3 conv (zero padding) over the row-major h x w grid of each frame."""
    h, w = model.grid
    f = phi.clone()
    for frame in range(phi.shape[0]):
        for row in range(h):
            for col in range(w):
                encoding = model.cpe.bias.clone()
                for dr in range(3):
                    for dc in range(3):
                        r, c = row + dr - 1, col + dc - 1
                        if 0 <= r < h and 0 <= c < w:
                            encoding += model.cpe.weight[:, 0, dr, dc] * phi[frame, r * w + c]
                f[frame, row * w + col] = phi[frame, row * w + col] + encoding
    return f


def reference_video(model: SACT, x: torch.Tensor):
    """Per patch vectors: support keys, query keys, values, each indexed [frame][patch]."""
    if model.input_norm is not None:
        x = torch.stack([torch.stack([layer_norm(model.input_norm, token) for token in frame])
                         for frame in x])  # fmt: skip
    phi = reference_tmixer(model, x) if model.tmixer is not None else x
    f = reference_cpe(model, phi) if model.cpe is not None else phi
    frames, patches = phi.shape[:2]
    index = [(i, p) for i in range(frames) for p in range(patches)]
    s_key = {ip: layer_norm(model.norm_support, affine(model.to_support, f[ip])) for ip in index}
    q_key = {ip: layer_norm(model.norm_query, affine(model.to_query, f[ip])) for ip in index}
    value = {ip: affine(model.to_value, phi[ip]) for ip in index}
    return s_key, q_key, value, frames, patches


def reference_logits(model: SACT, support, labels, query) -> torch.Tensor:
    supports = [reference_video(model, video) for video in support]
    queries = [reference_video(model, video) for video in query]
    way = int(labels.max()) + 1
    logits = torch.empty(len(query), way, dtype=torch.float64)
    for q, (_, q_key, q_value, frames, patches) in enumerate(queries):
        for c in range(way):
            shots = [supports[k] for k in range(len(support)) if labels[k] == c]
            distance = 0.0
            for p in range(patches):
                summed = torch.zeros(model.d_k, dtype=torch.float64)
                for i in range(frames):
                    scores, values = [], []
                    for s_key, _, s_value, _, _ in shots:
                        for m in range(patches):
                            a = torch.dot(s_key[i, m], q_key[i, p]) / math.sqrt(model.d_k)
                            scores.append(a)
                            values.append(s_value[i, m])
                    weights = torch.exp(torch.stack(scores) - max(scores))
                    weights = weights / weights.sum()
                    t_ip = sum(
                        weight * value for weight, value in zip(weights, values, strict=True)
                    )
                    summed += t_ip - q_value[i, p]
                distance += torch.sum((summed / frames**2) ** 2)
            scale = 1 if model.distance == "seed" else frames**4  # "sum": Σ_i without 1/T'²
            logits[q, c] = -scale * distance / patches
    return logits


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tmixer", "cpe"), CONFIGS)
def test_agrees_with_loop_reference(tmixer: bool, cpe: bool) -> None:
    model = make_model(tmixer=tmixer, cpe=cpe).double()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    with torch.no_grad():
        logits = model(support, labels, query)
        expected = reference_logits(model, support, labels, query)
    assert logits.shape == (5, 3)
    assert logits.dtype == torch.float64
    relative = (logits - expected).abs().max() / expected.abs().max()
    assert relative < 1e-9, f"relative error {relative:.2e}"


@pytest.mark.parametrize(
    "options", [{"input_norm": True}, {"distance": "sum"}, {"input_norm": True, "distance": "sum"}]
)
def test_the_deviations_from_the_seed_agree_with_the_loop_reference(options) -> None:
    model = make_model(**options).double()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    with torch.no_grad():
        logits = model(support, labels, query)
        expected = reference_logits(model, support, labels, query)
    relative = (logits - expected).abs().max() / expected.abs().max()
    assert relative < 1e-9, f"relative error {relative:.2e}"
    assert create_model("sact", **model.config()).config() == model.config()


def test_at_the_seed_formula_small_features_give_flat_logits() -> None:
    """Why SA-CT at the seed's formula can stall or collapse (docs/MODEL.md, "Training at the
    seed's scale"). Features like a random-init CNN's (small, a component shared by every video
    3.4x their spread) leave the TMixer dominated by its biases, the shared part 40x the
    per-video one, and the distance's 1/T'^4 flattens the rest: untrained logits differ by ~1e-6,
    the loss is ln N whatever the weights, and training steps follow noise. The input norm and
    the frame-sum distance give logits that differ by ~0.2 on the same features."""
    generator = torch.Generator().manual_seed(0)
    dim, frames = 32, 8
    shared = 0.1 * (0.5 + torch.rand(dim, generator=generator))  # (D,) every video's

    def videos(count: int) -> torch.Tensor:
        return 0.03 * torch.randn(count, frames, PATCHES, dim, generator=generator) + shared

    support, query = videos(15), videos(10)
    labels = torch.arange(5).repeat_interleave(3)
    spread, shared_share = {}, {}
    for name, build in {"seed": SACT.paper, "default": SACT}.items():
        torch.manual_seed(0)
        model = build(dim=dim, frames=frames, grid=GRID, d_k=32)
        with torch.no_grad():
            logits = model(support, labels, query)  # (Q, N)
            values = model.embed(torch.cat([support, query])).values  # (B, T', P, d_k)
        spread[name] = float((logits.max(dim=1).values - logits.min(dim=1).values).mean())
        common = values.mean(dim=0)  # (T', P, d_k): what every video shares
        shared_share[name] = float(common.norm() / (values - common).norm() * len(values) ** 0.5)
    assert spread["seed"] < 1e-5 and spread["default"] > 0.05
    assert shared_share["seed"] > 20 and shared_share["default"] < 5


def test_fused_attention_and_episode_batches_give_the_reference_logits() -> None:
    """`match_episodes` over several episodes at once, with explicit scores or through
    scaled_dot_product_attention, equals the loop reference episode by episode."""
    model = make_model().double().eval()
    generator = torch.Generator().manual_seed(3)
    episodes, way, shot, queries = 3, 3, 2, 4
    support = torch.randn(episodes * way * shot, FRAMES, PATCHES, DIM, generator=generator)
    query = torch.randn(episodes * queries, FRAMES, PATCHES, DIM, generator=generator)
    support, query = support.double(), query.double()
    labels = torch.arange(way).repeat_interleave(shot)  # class-major, as match_episodes wants
    with torch.no_grad():
        s_emb, q_emb = model.embed(support), model.embed(query)
        expected = torch.stack(
            [
                reference_logits(
                    model,
                    support[e * way * shot : (e + 1) * way * shot],
                    labels,
                    query[e * queries : (e + 1) * queries],
                )
                for e in range(episodes)
            ]
        )  # (E, Q, N)
        for fused in (False, True):
            logits = model.match_episodes(s_emb, q_emb, episodes=episodes, way=way, fused=fused)
            assert logits.shape == (episodes, queries, way)
            relative = (logits - expected).abs().max() / expected.abs().max()
            assert relative < 1e-9, f"fused={fused}: relative error {relative:.2e}"
        with pytest.raises(ValueError, match="do not make 4 3-way episodes"):
            model.match_episodes(s_emb, q_emb, episodes=4, way=way)


def test_labels_are_checked_on_the_cpu_and_class_major_supports_are_not_reindexed() -> None:
    order, way, shot = group_by_class(torch.tensor([1, 0, 2, 2, 0, 1]), 3)
    assert order.tolist() == [1, 4, 0, 5, 2, 3] and (way, shot) == (3, 2)
    support = SACTEmbedding(*(torch.randn(6, 2, 4, 8) for _ in range(3)))
    same, way, shot = class_major(support, torch.tensor([0, 0, 1, 1, 2, 2]), None)
    assert same is support and (way, shot) == (3, 2)
    sorted_support, _, _ = class_major(support, torch.tensor([1, 0, 2, 2, 0, 1]), None)
    assert torch.equal(sorted_support.values, support.values[order])


def test_parameter_names_follow_the_formulas() -> None:
    names = {name.rsplit(".", 1)[0] for name, _ in make_model().named_parameters()}
    expected = {f"tmixer.w{i}" for i in range(1, 9)}
    expected |= {"cpe", "to_support", "to_query", "to_value", "norm_support", "norm_query"}
    assert names == expected
    model = make_model()
    assert model.cpe.groups == DIM and model.cpe.kernel_size == (3, 3)
    assert model.cpe.padding == (1, 1)
    assert model.tmixer.w5.in_features == FRAMES and model.tmixer.w5.out_features == FRAMES // 2


def permute_patches(videos: torch.Tensor, seed: int) -> torch.Tensor:
    """Each video gets its own permutation of patches, the same for all of its frames."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(videos)
    for v, video in enumerate(videos):
        permutation = torch.randperm(video.shape[1], generator=generator)
        while torch.equal(permutation, torch.arange(video.shape[1])):
            permutation = torch.randperm(video.shape[1], generator=generator)
        out[v] = video[:, permutation]  # (T, P, D)
    return out


@pytest.mark.parametrize("tmixer", [True, False])
def test_patch_permutation_invariance_without_cpe(tmixer: bool) -> None:
    model = make_model(tmixer=tmixer, cpe=False).double().eval()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    with torch.no_grad():
        before = model(support, labels, query)
        after = model(permute_patches(support, 2), labels, permute_patches(query, 3))
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_patch_permutation_changes_logits_with_cpe() -> None:
    model = make_model(cpe=True).double().eval()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    with torch.no_grad():
        before = model(support, labels, query)
        after = model(permute_patches(support, 2), labels, permute_patches(query, 3))
    assert (after - before).abs().max() > 1e-6 * before.abs().max()


@pytest.mark.parametrize(("tmixer", "cpe"), CONFIGS)
def test_shot_order_does_not_matter(tmixer: bool, cpe: bool) -> None:
    model = make_model(tmixer=tmixer, cpe=cpe).double().eval()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    shuffle = torch.randperm(len(labels), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(support, labels, query)
        after = model(support[shuffle], labels[shuffle], query)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_relabelling_permutes_logit_columns() -> None:
    model = make_model().double().eval()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    relabel = torch.tensor([2, 0, 1])  # class c becomes relabel[c]
    with torch.no_grad():
        before = model(support, labels, query)
        after = model(support, relabel[labels], query)
    torch.testing.assert_close(after[:, relabel], before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("tmixer", "cpe"), CONFIGS)
def test_gradients_reach_every_parameter(tmixer: bool, cpe: bool) -> None:
    model = make_model(tmixer=tmixer, cpe=cpe)
    support, labels, query = make_episode()
    targets = torch.arange(len(query)) % 3
    torch.nn.functional.cross_entropy(model(support, labels, query), targets).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_embed_once_then_match_equals_forward() -> None:
    model = make_model().double().eval()
    generator = torch.Generator().manual_seed(5)
    pool = torch.randn(12, FRAMES, PATCHES, DIM, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        embedded = model.embed(pool)  # every video once, as evaluation does
        for episode in range(3):
            order = torch.randperm(12, generator=torch.Generator().manual_seed(episode))
            s_idx, q_idx = order[:6], order[6:10]
            labels = torch.tensor([1, 0, 2, 2, 0, 1])
            direct = model(pool[s_idx], labels, pool[q_idx])
            split = model.match(model.embed(pool[s_idx]), labels, model.embed(pool[q_idx]))
            indexed = model.match(embedded[s_idx], labels, embedded[q_idx])
            torch.testing.assert_close(split, direct, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(indexed, direct, rtol=1e-12, atol=1e-12)


def test_way_argument_covers_classes_beyond_the_labels() -> None:
    model = make_model().double().eval()
    support, labels, query = (t.double() if t.is_floating_point() else t for t in make_episode())
    with torch.no_grad():
        logits = model.match(model.embed(support), labels, model.embed(query), way=3)
    assert logits.shape == (5, 3)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        model.match(model.embed(support), labels, model.embed(query), way=2)


def test_embedding_indexing_len_and_to() -> None:
    model = make_model()
    embedded = model.embed(make_episode()[0])
    assert isinstance(embedded, SACTEmbedding) and len(embedded) == 6
    assert embedded.values.shape == (6, FRAMES // 2, PATCHES, D_K)
    assert len(embedded[1:4]) == 3
    assert len(embedded[torch.tensor([5, 0])]) == 2
    assert len(embedded[-1]) == 1 and torch.equal(embedded[-1].values, embedded.values[-1:])
    assert torch.equal(embedded[torch.tensor([5, 0])].query_keys[0], embedded.query_keys[5])
    assert embedded.to("cpu").values.device.type == "cpu"


def test_odd_frames_with_tmixer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="even T"):
        SACT(dim=DIM, frames=5, grid=GRID, d_k=D_K)
    model = SACT(dim=DIM, frames=5, grid=GRID, d_k=D_K, tmixer=False)
    videos = torch.randn(4, 5, PATCHES, DIM)
    assert model(videos[:2], torch.tensor([0, 1]), videos[2:]).shape == (2, 2)


def test_bad_inputs_are_clear_errors() -> None:
    model = make_model()
    support, labels, query = make_episode()
    with pytest.raises(ValueError, match="same number of shots"):
        model(support, torch.tensor([0, 0, 0, 1, 1, 2]), query)
    with pytest.raises(ValueError, match="shape"):
        model(support[:, :, :3], labels, query)
    with pytest.raises(ValueError, match="integers"):
        model(support, labels.float(), query)


def test_square_grid_from_an_int_and_config_rebuilds_the_model() -> None:
    model = SACT(dim=DIM, frames=FRAMES, grid=2, d_k=D_K, cpe=True)
    assert model.grid == (2, 2)
    config = model.config()
    assert config == {
        "dim": DIM,
        "frames": FRAMES,
        "grid": [2, 2],
        "d_k": D_K,
        "tmixer": True,
        "cpe": True,
        "input_norm": True,
        "distance": "sum",
    }
    rebuilt = create_model("sact", **config)
    rebuilt.load_state_dict(model.state_dict())
    support, labels, query = make_episode()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(support, labels, query), model(support, labels, query))


def test_float16_features_and_autocast() -> None:
    model = make_model().eval()
    support, labels, query = make_episode()
    with torch.no_grad():
        exact = model(support, labels, query)
        from_half = model(support.half(), labels, query.half())  # the store's dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(support.half(), labels, query.half())
    assert from_half.dtype == torch.float32 and mixed.dtype == torch.float32
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(from_half, exact, rtol=1e-2, atol=1e-2 * exact.abs().max().item())
    # bfloat16 keeps 8 bits of mantissa: the ranking of classes, not the digits, must survive
    assert (mixed - exact).abs().max() < 0.1 * exact.abs().max()


def test_half_precision_model_does_not_overflow_on_large_layernorm_gains() -> None:
    model = make_model().eval()
    with torch.no_grad():
        for norm in (model.norm_support, model.norm_query):
            # keys of norm √d_k·150: their dot products reach d_k·150² > 65504, float16's largest
            # value, unless scaled by 1/√d_k first (then at most √d_k·150² < 65504)
            norm.weight.fill_(150.0)
            norm.bias.zero_()
    model = model.half()
    support, labels, query = make_episode()
    with torch.no_grad():
        logits = model(support, labels, query)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_the_library_default_is_what_sact_train_trains_and_paper_is_the_seeds_formula() -> None:
    """One SA-CT default: `SACT(...)` builds the model `sact train` builds with its defaults, and
    `SACT.paper(...)` the paper's formula (the seed's `--no-input-norm --distance seed`)."""
    trained = TrainConfig()
    default = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).config()
    assert (default["input_norm"], default["distance"]) == (trained.input_norm, trained.distance)
    paper = SACT.paper(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).config()
    assert {name: paper[name] for name in PAPER} == PAPER
    assert {k: v for k, v in paper.items() if k not in PAPER} == {
        k: v for k, v in default.items() if k not in PAPER
    }
