"""How far extraction's compute precision moves the stored features away from float32.

On the same frames (rendered actions from `extract.synthetic`, 224 px, the backbone's own
normalization) each backbone runs once in float32, the reference, and then in each candidate
precision; the features are stored as float16 either way. For each candidate: the relative RMS
error of the stored features against the float32 reference, ||fp16(run) - ref|| / ||ref||, and its
ratio to the storage floor ||fp16(ref) - ref|| / ||ref|| that every precision pays.

    .venv/bin/python bench/precision.py                     # resnet50 and vit_small, CPU

No GPU here, so the GPU precisions are emulated on the CPU:

- TF32: every convolution's and linear layer's operands (inputs and weights) rounded to TF32's
  10-bit mantissa, products summed in float32, as tensor cores do with TF32 operands. Attention's
  own matmuls (ViT) are not rounded: for a ViT this slightly flatters TF32.
- bfloat16 / float16: CPU autocast, a proxy for CUDA's (same op lists, same output dtypes; both
  sum in float32).

Weights are random (the timm hub is out of reach here); ResNet blocks are built without timm's
zero-initialised last BatchNorm, which would silence every residual branch and hide its error.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sact.demo.synthetic import ACTION_CLASSES, render_action
from sact.extract.backbone import flush_denormals, resolve_preprocessing

TF32_DROPPED_BITS = 23 - 10  # float32 mantissa bits minus TF32's
BACKBONES = {
    "resnet50": {"zero_init_last": False},
    "vit_small_patch16_224": {},
}


def round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to the nearest TF32 value (10 mantissa bits, ties away from zero)."""
    bits = tensor.contiguous().view(torch.int32)
    half = 1 << (TF32_DROPPED_BITS - 1)
    mask = ~((1 << TF32_DROPPED_BITS) - 1)
    return ((bits + half) & mask).view(torch.float32)


def with_tf32_operands(model: nn.Module) -> nn.Module:
    """``model`` (changed in place) with every conv / linear computing on TF32-rounded operands."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.weight.data = round_to_tf32(module.weight.data)
            module.register_forward_pre_hook(
                lambda _, inputs: tuple(round_to_tf32(x) for x in inputs)
            )
    return model


def frames(count: int, *, size: int, seed: int) -> np.ndarray:
    """(count·8, size, size, 3) uint8: 8 frames of each of ``count`` rendered actions."""
    rng = np.random.default_rng(seed)
    clips = [
        render_action(ACTION_CLASSES[number % len(ACTION_CLASSES)], frames=8, size=size,
                      distractors=1, rng=rng)
        for number in range(count)
    ]  # fmt: skip
    return np.concatenate(clips)


def features(
    model: nn.Module, images: torch.Tensor, context: Callable[[], AbstractContextManager]
) -> torch.Tensor:
    with torch.inference_mode(), flush_denormals(), context():
        return model.forward_features(images).float()


def relative_error(run: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(run - reference) / torch.linalg.vector_norm(reference))


def measure(name: str, *, clips: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **BACKBONES[name]).eval()
    preprocessing = resolve_preprocessing(model)
    crops = preprocessing.resize_and_crop(frames(clips, size=preprocessing.size, seed=seed))
    images = preprocessing.normalize(crops)  # (B, 3, S, S) float32
    reference = features(model, images, nullcontext)
    stored = {"float16 storage of float32 (floor)": reference.half().float()}
    tf32_model = with_tf32_operands(copy.deepcopy(model))  # same weights, rounded
    stored["TF32 (emulated)"] = features(tf32_model, images, nullcontext).half().float()
    for dtype in (torch.bfloat16, torch.float16):
        autocast = lambda dtype=dtype: torch.autocast("cpu", dtype=dtype)  # noqa: E731
        label = f"{str(dtype).removeprefix('torch.')} autocast"
        stored[label] = features(model, images, autocast).half().float()
    floor = relative_error(stored["float16 storage of float32 (floor)"], reference)
    errors = {label: relative_error(run, reference) for label, run in stored.items()}
    return {
        "backbone": name,
        "images": int(images.shape[0]),
        "feature_shape": list(reference.shape[1:]),
        "reference_rms": float(reference.pow(2).mean().sqrt()),
        "relative_error": errors,
        "ratio_to_floor": {label: error / floor for label, error in errors.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", choices=list(BACKBONES))
    parser.add_argument("--clips", type=int, default=2, help="rendered clips of 8 frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    results = [
        measure(name, clips=args.clips, seed=args.seed) for name in args.backbone or BACKBONES
    ]
    table = Table(
        title=f"stored float16 features vs float32, {args.clips * 8} frames of 224 px, "
        f"random weights, load {os.getloadavg()[0]:.1f}"
    )
    table.add_column("backbone")
    table.add_column("compute")
    table.add_column("relative RMS error", justify="right")
    table.add_column("÷ float16 storage floor", justify="right")
    for result in results:
        for label, error in result["relative_error"].items():
            table.add_row(
                result["backbone"],
                label,
                f"{error:.2e}",
                f"{result['ratio_to_floor'][label]:.1f}×",
            )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
