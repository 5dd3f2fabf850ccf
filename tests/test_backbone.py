"""The frozen backbone: patch tokens from CNNs and ViTs, grid pooling, preprocessing, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from sact.extract.backbone import (
    BackboneError,
    ComputePlan,
    FrozenBackbone,
    denormals_flushed,
    flush_denormals,
    load_backbone,
    state_dict_sha256,
)
from sact.testing.videos import synthetic_frames

CPU = torch.device("cpu")


def crops_of(loaded, count: int = 3, seed: int = 0) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return loaded.preprocessing.resize_and_crop(synthetic_frames(count, seed=seed))


def test_cnn_maps_become_patch_tokens() -> None:
    loaded = load_backbone("resnet10t", random_init=True, size=64)
    assert loaded.grid == (2, 2) and loaded.dim == 512
    crops = crops_of(loaded)
    assert crops.shape == (3, 3, 64, 64) and crops.dtype == torch.uint8
    images = loaded.preprocessing.normalize(crops)
    with torch.inference_mode(), flush_denormals():
        expected = loaded.features.model.forward_features(images)  # (B, D, h, w)
    expected = expected.flatten(2).transpose(1, 2).to(torch.float16).numpy()  # (B, h*w, D)
    np.testing.assert_array_equal(FrozenBackbone(loaded, device=CPU)(crops), expected)


def test_vit_drops_prefix_tokens_and_keeps_the_grid() -> None:
    loaded = load_backbone("vit_tiny_patch16_224", random_init=True, size=64)
    assert loaded.grid == (4, 4) and loaded.dim == 192
    assert loaded.features.model.num_prefix_tokens == 1
    crops = crops_of(loaded)
    with torch.inference_mode(), flush_denormals():
        tokens = loaded.features.model.forward_features(loaded.preprocessing.normalize(crops))
    assert tokens.shape == (3, 17, 192)
    expected = tokens[:, 1:].to(torch.float16).numpy()  # (B, 16, D), class token dropped
    np.testing.assert_array_equal(FrozenBackbone(loaded, device=CPU)(crops), expected)


@pytest.mark.parametrize("name", ["resnet10t", "vit_tiny_patch16_224"])
def test_grid_pools_to_h_by_h(name: str) -> None:
    size = 128 if name == "resnet10t" else 64  # a 4×4 grid either way
    full = load_backbone(name, random_init=True, size=size)
    pooled = load_backbone(name, random_init=True, size=size, grid=2)
    assert pooled.grid == (2, 2) and full.grid == (4, 4)
    crops = crops_of(full, count=2)
    height, width = full.grid
    with torch.inference_mode(), flush_denormals():
        tokens = full.features(full.preprocessing.normalize(crops))  # (B, h*w, D)
        grid = tokens.transpose(1, 2).reshape(2, full.dim, height, width)  # (B, D, h, w)
        expected = F.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (B, 4, D)
        got = pooled.features(pooled.preprocessing.normalize(crops))
    torch.testing.assert_close(got, expected)


def test_preprocessing_follows_the_timm_data_config() -> None:
    loaded = load_backbone("resnet10t", random_init=True)
    config = timm.data.resolve_model_data_config(loaded.features.model)
    prep = loaded.preprocessing
    assert prep.size == config["input_size"][-1]
    assert prep.resize_to == int(prep.size / config["crop_pct"])
    assert (prep.interpolation, prep.mean, prep.std) == (
        config["interpolation"],
        tuple(config["mean"]),
        tuple(config["std"]),
    )
    assert load_backbone("resnet10t", random_init=True, size=96).preprocessing.size == 96
    # Same recipe as timm's own eval transform (PIL there, tensors here): close, not bitwise.
    frame = synthetic_frames(1, seed=4, height=120, width=160)[0]
    transform = timm.data.create_transform(**config)
    expected = transform(Image.fromarray(frame))  # (3, S, S), normalized
    got = prep.normalize(prep.resize_and_crop(frame[None]))[0]
    assert (got - expected).abs().mean() < 0.02


def test_random_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    first = load_backbone("resnet10t", random_init=True, size=64)
    second = load_backbone("resnet10t", random_init=True, size=64)
    other = load_backbone("resnet10t", random_init=True, size=64, seed=1)
    assert first.weights.source == "random-init"
    assert first.weights.sha256 == second.weights.sha256 != other.weights.sha256
    assert first.weights.sha256 == state_dict_sha256(second.features.model)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)


def test_flushing_denormals_gives_back_the_setting_it_found() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    with flush_denormals():
        assert denormals_flushed()
    assert not denormals_flushed()
    torch.set_flush_denormal(True)  # as a caller of sact might have set it
    try:
        with flush_denormals():
            assert denormals_flushed()
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_and_is_hashed(tmp_path: Path, suffix: str) -> None:
    source = load_backbone("resnet10t", random_init=True, size=64, seed=5)
    state = source.features.model.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:  # a training checkpoint: wrapped, with DataParallel prefixes and a classifier head
        wrapped = {f"module.{key}": value for key, value in state.items()}
        wrapped["module.fc.weight"] = torch.zeros(10, 512)
        torch.save({"state_dict": wrapped, "epoch": 3}, path)
    loaded = load_backbone("resnet10t", weights_file=path, size=64)
    assert loaded.weights.source == "file" and loaded.weights.file == str(path)
    import hashlib

    assert loaded.weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    crops = crops_of(loaded)
    np.testing.assert_array_equal(
        FrozenBackbone(loaded, device=CPU)(crops), FrozenBackbone(source, device=CPU)(crops)
    )


def test_bad_weights_and_unknown_backbones_are_clear_errors(tmp_path: Path) -> None:
    wrong = tmp_path / "vit.safetensors"
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(wrong))
    with pytest.raises(BackboneError, match="does not fit the model"):
        load_backbone("resnet10t", weights_file=wrong)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        load_backbone("resnet10t", weights_file=tmp_path / "junk.pth")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("resnet10t", weights_file=tmp_path / "missing.pth")
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnet_fifty'.*similar: "):
        load_backbone("resnet_fifty", random_init=True)
    with pytest.raises(BackboneError, match="exclude each other"):
        load_backbone("resnet10t", weights_file=wrong, random_init=True)


# ---- how batches run on each device (the CUDA branch is selected here; it runs on a GPU) ----


def test_the_cpu_computes_plain_float32_and_a_gpu_tf32_with_pinned_staging() -> None:
    assert ComputePlan.for_device(CPU) == ComputePlan(
        compute_dtype="float32", pinned=False, channels_last=False, side_streams=False
    )
    assert ComputePlan.for_device(torch.device("cuda", 3)) == ComputePlan(
        compute_dtype="tfloat32", pinned=True, channels_last=True, side_streams=True
    )


def test_two_batches_in_flight_each_get_their_own_tokens(one_torch_thread: None) -> None:
    loaded = load_backbone("resnet10t", random_init=True, size=32)
    frozen = FrozenBackbone(loaded, device=CPU)
    clips = [crops_of(loaded, count=2, seed=seed) for seed in range(5)]  # (T=2, 3, S, S) each
    batches = [clips[0:2], clips[2:3], clips[3:5]]  # 4, 2 and 4 frames: staging reused, grown
    expected = [FrozenBackbone(loaded, device=CPU)(torch.cat(batch)) for batch in batches]

    first = frozen.submit(batches[0])
    second = frozen.submit(batches[1])  # while the first is still in flight
    np.testing.assert_array_equal(first.result(), expected[0])
    third = frozen.submit(batches[2])  # into the first one's buffers, taken back
    np.testing.assert_array_equal(second.result(), expected[1])
    np.testing.assert_array_equal(third.result(), expected[2])
    assert frozen.mean_std[0].device == CPU  # built once, where the crops are normalized

    frozen.submit(batches[0])
    frozen.submit(batches[1])
    with pytest.raises(RuntimeError, match="result"):  # would overwrite tokens nobody took yet
        frozen.submit(batches[2])
