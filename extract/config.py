"""What `sact extract` is asked to do, and what decides and describes the features it writes.

``ExtractConfig`` is the command's options, resolved (each declared once, as a field carrying its
help: sact.common.options); ``feature_set_identity`` is everything that
decides the stored values (two runs with equal identity may share a feature set, docs/STORE.md);
``provenance`` is where the features came from. Both are saved in the feature set's attrs.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sact.common.errors import SactError
from sact.common.options import option
from sact.data.split_lists import load_split

if TYPE_CHECKING:
    from sact.extract.backbone import FrozenBackbone, LoadedBackbone
    from sact.extract.views import ViewSpec

FEATURE_DTYPE = "float16"
PROVENANCE_PACKAGES = ("sact", "torch", "timm", "zarr", "av", "numpy")


class ExtractConfigError(SactError):
    """Options that cannot work together; the message is one line for the user."""


# `sact extract --decoder` (extract/decoders.py); here so the command line checks a name before
# it imports torch
DECODER_CHOICES = ("auto", "pyav", "torchcodec-cpu", "torchcodec-cuda", "pynvvideocodec")


@dataclass
class ExtractConfig:
    """Everything `sact extract` needs; saved, resolved, in the feature set's attrs."""

    videos: Path = option(
        help="Folder of videos (flat or class folders) or class/video/ frame folders.",
        metavar="DIR",
    )
    out: str = option(help="Feature store (.zarr path or URL).", metavar="STORE")
    split: str | None = option(None, help="Only this split's videos: a built-in name or a folder.")
    backbone: str = option("resnet50.tv_in1k", help="Any timm model name.")
    weights: Path | None = option(None, help="Backbone weights file (.safetensors or .pth).")
    random_init: bool = option(
        False, help="Seeded random weights (tests, demos).", flag="--random-init"
    )
    frames: int = option(8, help="Frames per video, T.")
    size: int | None = option(None, help="Crop size; default: the backbone's.")
    grid: int | None = option(None, help="Pool the patch grid to H×H.")  # None: the backbone's
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    # batch_size·T frames; None: chosen for the device (extract/sizing.py)
    batch_size: int | None = option(
        None, help="Videos per forward pass; default: 256 frames on a GPU, 16 videos on a CPU."
    )
    # None: chosen from the cores and the card (extract/sizing.py)
    workers: int | None = option(
        None,
        help="Decoding processes (0: none), or a GPU decoder's sessions; default: from the cores "
        "and the card.",
    )
    # extract/decoders.py
    decoder: str = option(
        "auto",
        # brackets escaped: the help is rich markup
        help="auto, pyav, torchcodec-cpu, torchcodec-cuda (pip install 'sact\\[torchcodec]') or "
        "pynvvideocodec (pip install 'sact\\[nvdec]'); auto: a GPU decoder when one is "
        "installed and the backbone is on the GPU, else pyav.",
    )
    name: str | None = option(None, help="Feature set name; default from config.")
    # the unit of work, writing and resume
    shard_size: int = option(64, help="Videos per shard (unit of resume).")
    seed: int = 0  # the random init's seed
    write_queue: int = 2  # finished shards waiting for the writer thread; 0: written in the loop
    # extract/views.py
    views: tuple[str, ...] = option(
        (),
        flag="--view",
        help="An augmented view besides the canonical one (repeatable): parts joined by _ from "
        "jitter, crop-{tl,tr,bl,br,random}, flip, d<k>; e.g. jitter_crop-random_d0.",
    )
    # each named jitter_crop-random_dK
    random_views: int = option(0, help="Add K views of jittered frames and random crops (no flip).")
    # flips are refused on a direction-sensitive split (SSv2) unless asked for
    allow_flip: bool = option(
        False, help="Extract flipped views even on an SSv2 split.", flag="--allow-flip"
    )

    def view_specs(self) -> list[ViewSpec]:
        """The augmented views to extract, in order; refuses flips on SSv2 without allow_flip."""
        # imported here: views imports numpy, and the command line reads this module at start-up
        from sact.extract.views import requested_views

        return requested_views(
            list(self.views),
            random_count=self.random_views,
            flip_allowed=self.allow_flip,
            split=self.split,
        )

    def check(self) -> None:
        """Everything that can be checked without the backbone or the decoder: the command line
        calls it before it imports torch and timm, so a mistake is refused in a fraction of a
        second."""
        for flag, value, least in (
            ("--frames", self.frames, 1),
            ("--batch-size", self.batch_size, 1),
            ("--shard-size", self.shard_size, 1),
            ("--workers", self.workers, 0),
            ("write_queue", self.write_queue, 0),
        ):
            if value is not None and value < least:
                raise ExtractConfigError(f"{flag} must be at least {least}, got {value}")
        if self.decoder not in DECODER_CHOICES:
            raise ExtractConfigError(
                f"--decoder must be one of {', '.join(DECODER_CHOICES)}, got {self.decoder!r}"
            )
        if not Path(self.videos).is_dir():
            raise ExtractConfigError(
                f"videos folder {self.videos} does not exist or is not a folder"
            )
        if self.split is not None:
            # an unknown name, a malformed list, or a list missing (or misspelled) that training
            # or evaluation would miss only once the extraction is over
            missing = load_split(self.split).missing_parts()
            if missing is not None:
                raise ExtractConfigError(missing)
        if self.weights is not None and not Path(self.weights).is_file():
            raise ExtractConfigError(f"weights file {self.weights} does not exist")
        self.view_specs()

    def warnings(self) -> list[str]:
        """What this config allows but will likely regret; printed before the run starts."""
        if self.frames % 2 == 0:
            return []
        fewer = f" or an even --frames below {self.frames}" if self.frames > 1 else ""
        return [
            f"--frames {self.frames} is odd: SA-CT's TMixer halves the frames and needs an even "
            f"number, so SA-CT models trained on this feature set need --no-tmixer{fewer}"
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }


def feature_set_identity(
    loaded: LoadedBackbone, *, frames: int, compute_dtype: str, decoder: str, decoder_version: str
) -> dict[str, Any]:
    """Everything that decides the stored values: two runs with equal identity may share a set.

    ``compute_dtype`` is the backbone's arithmetic (``FrozenBackbone.compute_dtype``: float32 on
    the CPU, tfloat32 on CUDA): features computed in two precisions never share a feature set.
    ``decoder`` and ``decoder_version`` (extract/decoders.py): neither do frames of two decoders,
    or of two versions of one, whose pixels may differ in their last bits.
    """
    # imported here: sampling imports numpy, and the command line reads this module at start-up
    from sact.store.sampling import FRAME_SAMPLING

    prep = loaded.preprocessing
    return {
        "backbone": loaded.name,
        "weights_source": loaded.weights.source,
        "weights_sha256": loaded.weights.sha256,
        "input_size": prep.size,
        "resize_crop": prep.rule,
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "frames": frames,
        "frame_sampling": FRAME_SAMPLING,
        "grid": list(loaded.grid),
        "dim": loaded.dim,
        "dtype": FEATURE_DTYPE,
        "compute_dtype": compute_dtype,
        "decoder": decoder,
        "decoder_version": decoder_version,
    }


def default_name(config: ExtractConfig, loaded: LoadedBackbone, *, compute_dtype: str) -> str:
    """E.g. ``resnet50.tv_in1k-224px-8f``, ``-g4`` when pooled, a suffix for non-hub weights,
    ``-tf32`` when computed on TF32 tensor cores (a GPU), so CPU and GPU runs of one config
    land in two feature sets instead of one refusing the other."""
    backbone = "".join(c if c.isalnum() or c in "._-" else "_" for c in config.backbone)
    name = f"{backbone}-{loaded.preprocessing.size}px-{config.frames}f"
    if config.grid is not None:
        name += f"-g{config.grid}"
    if loaded.weights.source == "random-init":
        name += "-randinit"
    elif loaded.weights.source == "file":
        name += f"-w{loaded.weights.sha256[:8]}"
    if compute_dtype == "tfloat32":
        name += "-tf32"
    return name


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def view_provenance(config: ExtractConfig) -> dict[str, Any]:
    """Where a view came from: when, and the command that first asked for it."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"sact": _version("sact")},
        "config": config.to_json(),
    }


def provenance(config: ExtractConfig, frozen: FrozenBackbone) -> dict[str, Any]:
    """Where the features came from; informative, never compared between runs."""
    return {
        # resize_crop (in the identity) in words, as a number for readers such as `sact explain`
        "resize_to": frozen.loaded.preprocessing.resize_to,
        "versions": {package: _version(package) for package in PROVENANCE_PACKAGES},
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "videos_dir": str(config.videos.resolve()),
        "split": config.split,
        "device": str(frozen.device),
        "weights_file": frozen.loaded.weights.file,
        "config": config.to_json(),
    }
