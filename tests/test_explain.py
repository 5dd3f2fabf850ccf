"""The attention figure: weights as SA-CT computes them, drawn to a PNG that is really there."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from typer.testing import CliRunner

from sact.cli import app
from sact.demo.synthetic import SyntheticDatasetConfig, make_synthetic_dataset
from sact.explain import ExplainConfig, ExplainError, explain
from sact.extract.pipeline import run_extraction
from sact.fewshot.attention import (
    DPI,
    PANEL_INCHES,
    attention_weights,
    draw_attention,
    focused_patches,
)
from sact.fewshot.model import SACT
from sact.fewshot.training import TrainConfig, train
from sact.testing.extraction import tiny_config

DIM, FRAMES, GRID = 8, 4, (3, 3)
PANEL = int(PANEL_INCHES * DPI)  # pixels
PATCHES = GRID[0] * GRID[1]
CLASSES = ("slide-right", "grow", "blink", "static", "pulse", "slide-down", "disappear")


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_weights_are_the_models_own_attention() -> None:
    torch.manual_seed(0)
    model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=6)
    support, query = torch.randn(2, FRAMES, PATCHES, DIM)
    weights = attention_weights(model, support, query)
    assert weights.shape == (FRAMES // 2, PATCHES, PATCHES)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    # from the formulas: softmax over support patches of LN(W_s f_s)·LN(W_q f_q) / √d_k, per frame
    s, q = model.embed(support[None]), model.embed(query[None])
    scores = torch.einsum("imd,ipd->ipm", s.support_keys[0], q.query_keys[0]) / 6**0.5
    np.testing.assert_allclose(weights, scores.softmax(-1).detach().numpy(), rtol=1e-5, atol=1e-7)


def test_focused_patches_picks_the_sharpest_attention() -> None:
    weights = np.full((2, 4, 4), 0.25)
    weights[0, 2] = [0.97, 0.01, 0.01, 0.01]
    weights[1, 1] = [0.0, 0.0, 0.6, 0.4]
    picked = focused_patches(weights, 1)
    assert picked.tolist() == [[2], [1]]
    with pytest.raises(ValueError, match="count"):
        focused_patches(weights, 5)


def test_draw_attention_writes_a_png_of_the_stated_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = 2
    query_frames = rng.integers(0, 255, size=(frames, 48, 48, 3), dtype=np.uint8)
    support_frames = np.zeros((frames, 48, 48, 3), dtype=np.uint8)
    weights = rng.dirichlet(np.ones(PATCHES), size=(frames, PATCHES))  # (T', P, P)
    path = draw_attention(
        query_frames=query_frames,
        support_frames=support_frames,
        weights=weights,
        grid=GRID,
        patches=focused_patches(weights, 2),
        path=tmp_path / "figure" / "attention.png",
    )
    image = read_png(path)
    assert image.shape == (frames * PANEL, 3 * PANEL, 3)
    assert image.std() > 10  # not blank
    # the black support frames are painted by the heat map
    right = image[:, 2 * PANEL :]
    assert len(np.unique(right.reshape(-1, 3), axis=0)) > 20
    assert not list(path.parent.glob(".*partial*"))
    with pytest.raises(ValueError, match="do not match"):
        draw_attention(
            query_frames=query_frames,
            support_frames=support_frames,
            weights=weights[:, :4],
            grid=GRID,
            patches=focused_patches(weights, 1),
            path=tmp_path / "bad.png",
        )


def test_ids_in_any_script_draw_without_glyph_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(PATCHES), size=(1, PATCHES))  # (T', P, P)
    frames = np.zeros((1, 48, 48, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw_attention(
            query_frames=frames,
            support_frames=frames,
            weights=weights,
            grid=GRID,
            patches=focused_patches(weights, 1),
            path=tmp_path / "attention.png",
            title="SA-CT cross-attention: query 打篮球_001 → support 踢足球_002",
        )
    assert not [warning for warning in caught if "Glyph" in str(warning.message)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SA-CT run on a store extracted from generated videos: the real chain, tiny."""
    root = tmp_path_factory.mktemp("explain")
    dataset = make_synthetic_dataset(
        SyntheticDatasetConfig(
            root=root / "dataset", videos_per_class=2, frames=6, size=32, classes=CLASSES
        )
    )
    store = str(root / "feats.zarr")
    run_extraction(
        tiny_config(
            dataset.videos,
            store,
            split=str(dataset.splits),
            backbone="vit_tiny_patch16_224",
            size=48,
        )
    )
    common = {"feats": store, "split": str(dataset.splits), "way": 2, "shot": 1, "query": 1,
              "iterations": 2, "val_every": 2, "val_episodes": 2, "device": "cpu"}  # fmt: skip
    train(TrainConfig(**common, model="sact", d_k=8, out=str(root / "sact")))
    train(TrainConfig(**common, model="nearest-mean", out=str(root / "floor")))
    return {
        "root": root,
        "store": Path(store),
        "sact": root / "sact",
        "floor": root / "floor",
    }


def test_explain_draws_frames_from_the_source_videos(tiny_run: dict[str, Path]) -> None:
    out = tiny_run["root"] / "figure.png"
    path = explain(
        ExplainConfig(run=tiny_run["sact"], query="grow-000", support="grow-001", out=out)
    )
    image = read_png(path)
    header = int(0.4 * DPI)
    assert image.shape == (2 * PANEL + header, 3 * PANEL, 3)
    assert image.std() > 10
    default = explain(ExplainConfig(run=tiny_run["sact"], query="grow-000", support="static-001"))
    assert default == tiny_run["sact"] / "attention-grow-000-static-001.png" and default.exists()


def test_explain_cli_and_its_errors(tiny_run: dict[str, Path]) -> None:
    runner = CliRunner()
    out = tiny_run["root"] / "cli.png"
    ok = runner.invoke(
        app,
        ["explain", "--run", str(tiny_run["sact"]), "--query", "grow-000",
         "--support", "grow-001", "--out", str(out), "--patches", "1"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert out.exists()
    cases = [
        (["explain", "--run", str(tiny_run["sact"])], "needs --run"),
        (["explain", "--run", str(tiny_run["sact"]), "--query", "nope", "--support", "grow-001"],
         "not in feature set"),
        (["explain", "--run", str(tiny_run["floor"]), "--query", "grow-000",
          "--support", "grow-001"], "needs SA-CT"),
        (["explain", "--run", str(tiny_run["root"] / "missing"), "--query", "a", "--support", "b"],
         "does not exist"),
    ]  # fmt: skip
    for arguments, message in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output


def test_a_stored_path_that_leaves_the_videos_folder_is_refused(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    group = zarr.open_group(str(tiny_run["store"]), mode="a")["tiny"]
    paths = group["path"][:]
    index = [str(v) for v in group["video_id"][:]].index("grow-000")
    original = paths[index]
    try:
        paths[index] = "../../../etc/passwd"
        group["path"][:] = paths
        with pytest.raises(ExplainError, match="leaves the videos folder"):
            explain(ExplainConfig(run=tiny_run["sact"], query="grow-000", support="grow-001",
                                  out=tmp_path / "x.png"))  # fmt: skip
    finally:
        paths[index] = original
        group["path"][:] = paths
    assert not (tmp_path / "x.png").exists()


def test_the_crop_rule_is_read_as_numbers_and_from_older_stores_in_words(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    group = zarr.open_group(str(tiny_run["store"]), mode="a")["tiny"]
    attrs = dict(group.attrs["sact"])
    assert (attrs["resize_to"], attrs["input_size"]) == (53, 48)  # vit_tiny: crop_pct 0.9
    assert attrs["resize_crop"] == "resize shorter side to 53, center crop 48x48"
    figure = {"run": tiny_run["sact"], "query": "grow-000", "support": "grow-001"}
    from_numbers = explain(ExplainConfig(**figure, out=tmp_path / "numbers.png")).read_bytes()
    try:
        group.attrs["sact"] = {key: v for key, v in attrs.items() if key != "resize_to"}
        from_words = explain(ExplainConfig(**figure, out=tmp_path / "words.png")).read_bytes()
        assert from_words == from_numbers
        group.attrs["sact"] = {**attrs, "resize_to": "53"}
        with pytest.raises(ExplainError, match="does not record its resize/crop rule"):
            explain(ExplainConfig(**figure, out=tmp_path / "bad.png"))
    finally:
        group.attrs["sact"] = attrs
