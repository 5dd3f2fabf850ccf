"""The README's table of recommended frozen backbones, computed from the models themselves.

Each model is built from its timm config with ``pretrained=False`` on the meta device (shapes
only: no weights, no memory, no arithmetic) and run through sact's own ``PatchFeatures``, so the
grid and D are what ``sact extract`` stores. Sizes are the uncompressed float16 features, T·P·D·2
bytes per video, for the SSv2 videos of the OTAM split (data/splits/ssv2_OTAM).

    python docs/backbones.py        # prints the markdown table
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch

from sact.data.split_lists import load_split
from sact.extract.backbone import PatchFeatures, resolve_preprocessing

FRAMES = 8
FLOAT16_BYTES = 2
POOLED_GRID = 4  # `--grid 4`, STRM's setting
# (what it is, timm name, --size or None for the model's own)
RECOMMENDED = (
    ("ResNet-50, ImageNet-1k", "resnet50.tv_in1k", None),
    ("ConvNeXt-B, ImageNet-22k", "convnext_base.fb_in22k", None),
    ("CLIP ViT-B/16 (OpenAI)", "vit_base_patch16_clip_224.openai", None),
    ("SigLIP ViT-B/16", "vit_base_patch16_siglip_224.webli", None),
    ("DINOv2 ViT-B/14", "vit_base_patch14_dinov2.lvd142m", 224),
    ("DINOv2 ViT-B/14, 4 registers", "vit_base_patch14_reg4_dinov2.lvd142m", 224),
    ("DINOv2 ViT-B/14 at its own 518 px", "vit_base_patch14_dinov2.lvd142m", None),
)


@dataclass(frozen=True)
class BackboneRow:
    label: str
    name: str
    size_option: int | None
    input_size: int
    grid: tuple[int, int]
    dim: int

    @property
    def bytes_per_video(self) -> int:
        return FRAMES * self.grid[0] * self.grid[1] * self.dim * FLOAT16_BYTES

    @property
    def pooled_bytes_per_video(self) -> int:
        return FRAMES * POOLED_GRID**2 * self.dim * FLOAT16_BYTES

    def command(self) -> str:
        size = f" --size {self.size_option}" if self.size_option else ""
        return (
            "sact extract --videos ssv2/ --split ssv2_OTAM --out feats.zarr "
            f"--backbone {self.name}{size}"
        )


def describe(label: str, name: str, size: int | None) -> BackboneRow:
    with torch.device("meta"):
        sized = {"img_size": size} if size is not None else {}
        model = timm.create_model(name, pretrained=False, num_classes=0, **sized)
        preprocessing = resolve_preprocessing(model, size=size)
        images = torch.zeros(1, 3, preprocessing.size, preprocessing.size)
        feature_map = PatchFeatures(model=model).feature_map(images)  # (1, D, h, w)
    height, width = feature_map.shape[-2:]
    return BackboneRow(
        label, name, size, preprocessing.size, (int(height), int(width)), feature_map.shape[1]
    )


def ssv2_otam_videos() -> int:
    return sum(len(entries) for entries in load_split("ssv2_OTAM").parts.values())


def markdown_rows(rows: list[BackboneRow], videos: int) -> list[str]:
    lines = [
        "| backbone | `--backbone` | input | grid (P) | D | per video | SSv2-OTAM store | "
        f"with `--grid {POOLED_GRID}` | extract with |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        height, width = row.grid
        lines.append(
            f"| {row.label} | `{row.name}` | {row.input_size} px | {height}×{width} "
            f"({height * width}) | {row.dim} | {row.bytes_per_video / 1e6:.2f} MB | "
            f"{row.bytes_per_video * videos / 1e9:,.0f} GB | "
            f"{row.pooled_bytes_per_video * videos / 1e9:,.0f} GB | `{row.command()}` |"
        )
    return lines


def main() -> None:
    rows = [describe(*recommended) for recommended in RECOMMENDED]
    print("\n".join(markdown_rows(rows, ssv2_otam_videos())))


if __name__ == "__main__":
    main()
