"""A frozen timm backbone that turns frames into patch features.

Any timm model works through ``forward_features``: a CNN's (B, D, h, w) map becomes h·w patches,
a ViT's tokens lose their prefix (class / register) tokens and are laid back on the patch grid.
``grid`` adaptive-average-pools that grid to grid×grid patches (STRM uses 4×4).

Preprocessing comes from the model's own timm data config: resize the shorter side to
``floor(size / crop_pct)``, center crop size×size, scale to [0, 1], subtract mean, divide by std.
Workers do the resize and crop on uint8 frames (4× less to move between processes); the device
does the normalization. ``FrozenBackbone`` runs batches on a device, two in flight on CUDA.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from sact.common.errors import SactError
from sact.common.tensor_files import UnsafeFileError, load_tensors
from sact.extract.hub import hub_weights

INTERPOLATIONS = {
    "bicubic": TF.InterpolationMode.BICUBIC,
    "bilinear": TF.InterpolationMode.BILINEAR,
    "nearest": TF.InterpolationMode.NEAREST,
}
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Wrappers training scripts put around a state dict.
CHECKPOINT_KEYS = ("state_dict", "model", "module")


def denormals_flushed() -> bool:
    """Whether this thread's CPU flushes float32 denormals to zero (torch sets it, never says)."""
    smallest_normal = torch.finfo(torch.float32).tiny
    return bool(torch.tensor(smallest_normal) / 2 == 0)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat float32 denormals as zero on the CPU while the backbone runs.

    Randomly initialized (and some trained) networks produce denormal activations, which x86
    CPUs process 10-20× slower. They lie far below float16's smallest value, so the stored
    features do not change. The thread's previous setting is restored afterwards.
    """
    previous = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


class BackboneError(SactError):
    """A backbone or weights that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center crop, normalize: the backbone's own eval transform."""

    size: int
    resize_to: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def rule(self) -> str:
        return f"resize shorter side to {self.resize_to}, center crop {self.size}x{self.size}"

    def resize_images(self, images: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 RGB on any device -> (T, 3, H', W') uint8 there, shorter side
        ``resize_to``."""
        return TF.resize(
            images,
            [self.resize_to],
            interpolation=INTERPOLATIONS[self.interpolation],
            antialias=True,
        )

    def resize_and_crop_images(self, images: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 RGB on any device -> (T, 3, size, size) uint8 center crops."""
        return TF.center_crop(self.resize_images(images), [self.size, self.size]).contiguous()

    def resize_and_crop_images_at(
        self, images: torch.Tensor, origin: Callable[[int, int], tuple[int, int]], *, flip: bool
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The crop of an augmented view (extract/views.py): the size×size square whose top-left
        corner ``origin(H', W')`` places in the resized frames, the same on every frame, mirrored
        left to right when ``flip``. (T, 3, H, W) uint8 in; (T, 3, size, size) uint8 and
        (top, left) out."""
        resized = self.resize_images(images)  # (T, 3, H', W')
        top, left = origin(resized.shape[-2], resized.shape[-1])
        crops = TF.crop(resized, top, left, self.size, self.size)  # (T, 3, S, S)
        if flip:
            crops = TF.horizontal_flip(crops)
        return crops.contiguous(), (top, left)

    @staticmethod
    def as_images(frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 RGB frames (numpy, as decoded) -> a (T, 3, H, W) view."""
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)

    def resize(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 RGB frames -> (T, 3, H', W') uint8, shorter side ``resize_to``."""
        return self.resize_images(self.as_images(frames))

    def resize_and_crop(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 RGB frames -> (T, 3, size, size) uint8 center crops."""
        return self.resize_and_crop_images(self.as_images(frames))

    def mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel mean and std as (1, 3, 1, 1) float32 tensors on ``device``."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return mean, std

    def normalize(
        self, crops: torch.Tensor, *, mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> float32, scaled to [0, 1] then standardized per channel, in the
        crops' memory format; ``mean_std`` (from ``mean_std``) saves building them again."""
        mean, std = mean_std or self.mean_std(crops.device)
        return (crops.float() / 255.0 - mean) / std


def resolve_preprocessing(model: nn.Module, *, size: int | None = None) -> Preprocessing:
    """The model's timm data config (``resolve_model_data_config``); ``size`` overrides the crop."""
    config = timm.data.resolve_model_data_config(model)
    crop = size or int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    return Preprocessing(
        size=crop,
        resize_to=math.floor(crop / crop_pct),
        interpolation=interpolation,
        mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
    )


class PatchFeatures(nn.Module):
    """timm ``forward_features`` as patch tokens: (B, 3, S, S) -> (B, P, D), P = h·w.

    A feature map (ResNet, ConvNeXt, EfficientNet; Swin's NHWC map) is already the grid. A token
    model (ViT and its CLIP, DINOv2, SigLIP, DeiT, EVA, BEiT variants, hybrids) first emits its
    prefix tokens, timm's ``num_prefix_tokens``: the class token, DINOv2's registers, DeiT's
    distillation token. They describe the whole image, not a place in it, so they are dropped,
    and the patch tokens are laid on the grid the patch embedding makes of the input's size.
    """

    def __init__(self, *, model: nn.Module, grid: int | None = None) -> None:
        super().__init__()
        # typed by what timm adds to nn.Module: forward_features, patch_embed, num_prefix_tokens
        self.model: Any = model
        self.grid = grid
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def token_grid(self, image_size: tuple[int, int], tokens: int) -> tuple[int, int]:
        """(h, w) of the patch tokens of an image of ``image_size``, checked against their count."""
        patch_embed: Any = getattr(self.model, "patch_embed", None)
        if hasattr(patch_embed, "dynamic_feat_size"):
            height, width = patch_embed.dynamic_feat_size(image_size)
        elif getattr(patch_embed, "grid_size", None) is not None:
            height, width = patch_embed.grid_size
        else:
            height = width = math.isqrt(tokens)
        if height * width != tokens:
            raise BackboneError(
                f"{type(self.model).__name__} returned {tokens} tokens after its "
                f"{self.num_prefix_tokens} prefix tokens, not the {height}x{width} patch grid of "
                f"a {image_size[0]}x{image_size[1]} image; this model is not supported"
            )
        return int(height), int(width)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D, h, w): the backbone's patch grid before any pooling."""
        x = self.model.forward_features(images)
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2) if self.channels_last_output else x  # (B, D, h, w)
        if x.ndim != 3:
            raise BackboneError(
                f"forward_features returned a {x.ndim}-d tensor; expected 3-d or 4-d"
            )
        patches = x[:, self.num_prefix_tokens :]  # (B, h*w, D)
        height, width = self.token_grid((images.shape[-2], images.shape[-1]), patches.shape[1])
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.feature_map(images)  # (B, D, h, w)
        if self.grid is not None:
            x = F.adaptive_avg_pool2d(x, self.grid)  # (B, D, grid, grid)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, D)


@dataclass(frozen=True)
class Weights:
    source: str  # "hub", "file" or "random-init"
    sha256: str
    file: str | None = None


@dataclass
class LoadedBackbone:
    """A frozen backbone on the CPU, with what decides its features' values."""

    name: str
    features: PatchFeatures
    preprocessing: Preprocessing
    weights: Weights
    grid: tuple[int, int]  # (h, w) of the stored patches
    dim: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the state dict: each key, dtype, shape and raw bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _unknown_backbone(name: str) -> BackboneError:
    base = name.split(".")[0]
    similar = timm.list_models(f"*{base[:6]}*")[:6] if base else []
    hint = f"; similar: {', '.join(similar)}" if similar else ""
    return BackboneError(f"unknown backbone {name!r}: not a timm model{hint}")


def _pretrained_overlay(name: str) -> dict[str, Any]:
    """What timm needs to load ``name``'s hub weights without a minute of retries offline."""
    location = hub_weights(name)
    if location is None:
        return {}
    cached = location.cached_file()
    if cached is not None:
        return {"file": str(cached)}
    location.check_reachable()
    return {}


def _create_once(name: str, *, pretrained: bool, seed: int, **kwargs: Any) -> nn.Module:
    # A fixed seed makes a random init the same on every run; fork_rng keeps the global RNG as is.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise _unknown_backbone(name) from error
            if pretrained:
                raise BackboneError(
                    f"cannot load pretrained weights for {name}: {error}; "
                    "use --weights FILE or --random-init"
                ) from error
            raise
        except (OSError, ValueError) as error:
            if pretrained:
                raise BackboneError(
                    f"cannot load pretrained weights for {name} ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}); "
                    "use --weights FILE or --random-init"
                ) from error
            raise


def _create(name: str, *, pretrained: bool, seed: int, size: int | None) -> nn.Module:
    """``timm.create_model`` for input size ``size``.

    A token model is built for one input size (``img_size``; timm resamples pretrained position
    embeddings to it on loading), which spares the per-forward resampling of
    ``dynamic_img_size``; every timm token model takes ``img_size``. A CNN takes any size and
    refuses the argument.
    """
    overlay = {"pretrained_cfg_overlay": _pretrained_overlay(name)} if pretrained else {}
    if size is not None:
        with suppress(TypeError):
            return _create_once(name, pretrained=pretrained, seed=seed, img_size=size, **overlay)
    return _create_once(name, pretrained=pretrained, seed=seed, **overlay)


def _set_input_size(model: nn.Module, size: int) -> None:
    """Rebuild a loaded token model's position embeddings for ``size`` (timm's own resampling)."""
    patch_embed = getattr(model, "patch_embed", None)
    built_for = getattr(patch_embed, "img_size", None)
    set_input_size = getattr(model, "set_input_size", None)
    if set_input_size is None or built_for in (None, (size, size)):
        return
    try:
        set_input_size(img_size=(size, size))
    except (AssertionError, RuntimeError, ValueError) as error:
        raise BackboneError(
            f"{type(model).__name__} cannot take {size} px inputs: {error}"
        ) from error


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .pth/.pt/.bin via ``torch.load(weights_only)``."""
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        raise BackboneError(f"weights file {path} must end in {', '.join(WEIGHT_FILE_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = load_tensors(path)
    except UnsafeFileError:
        raise
    except Exception as error:  # any failure to parse the file is the user's file being bad
        raise BackboneError(f"cannot read weights file {path}: {error}") from error
    for key in CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    head_prefixes = tuple(
        f"{name}." for name in ([classifier] if isinstance(classifier, str) else classifier or [])
    )
    # The backbone is built without its classifier; a checkpoint's head weights are not needed.
    state = {k: v for k, v in state.items() if not (head_prefixes and k.startswith(head_prefixes))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise BackboneError(f"weights file {path} does not fit the model: {first}") from error
    if missing or unexpected:
        raise BackboneError(
            f"weights file {path} does not fit the model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def _from_weights_file(name: str, path: Path, *, size: int | None) -> nn.Module:
    """The model with a weights file's state dict, at input size ``size``.

    A published checkpoint holds the position embeddings of the model's default size (DINOv2's
    518 px): load it into the model as built by default, then resample them to ``size``. A file
    saved at ``size`` itself loads into the model built for ``size``.
    """
    state = read_weights_file(path)
    model = _create(name, pretrained=False, seed=0, size=None)
    try:
        _load_state_dict(model, state, path)
    except BackboneError:
        if size is None:
            raise
        model = _create(name, pretrained=False, seed=0, size=size)
        _load_state_dict(model, state, path)
        return model
    if size is not None:
        _set_input_size(model, size)
    return model


def load_backbone(
    name: str,
    *,
    weights_file: Path | None = None,
    random_init: bool = False,
    size: int | None = None,
    grid: int | None = None,
    seed: int = 0,
) -> LoadedBackbone:
    """Build a frozen timm backbone in eval mode on the CPU, with its preprocessing and identity.

    Weights: ``weights_file`` (.safetensors or .pth), else ``random_init`` (seeded), else the
    timm hub (``pretrained=True``). ``size`` sets the crop; a ViT is built for that size.
    """
    if weights_file is not None and random_init:
        raise BackboneError("--weights and --random-init exclude each other")
    if grid is not None and grid < 1:
        raise BackboneError(f"--grid must be at least 1, got {grid}")
    if size is not None and size < 8:
        raise BackboneError(f"--size must be at least 8 pixels, got {size}")
    if not timm.is_model(name):
        raise _unknown_backbone(name)
    if weights_file is not None:
        model = _from_weights_file(name, weights_file, size=size)
        weights = Weights(source="file", sha256=file_sha256(weights_file), file=str(weights_file))
    else:
        pretrained = not random_init
        model = _create(name, pretrained=pretrained, seed=seed, size=size)
        source = "hub" if pretrained else "random-init"
        weights = Weights(source=source, sha256=state_dict_sha256(model))
    model.eval().requires_grad_(False)
    preprocessing = resolve_preprocessing(model, size=size)
    features = PatchFeatures(model=model, grid=grid)
    probe = torch.zeros(1, 3, preprocessing.size, preprocessing.size)
    try:
        with torch.inference_mode(), flush_denormals():
            feature_map = features.feature_map(probe)  # (1, D, h, w)
    except (AssertionError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BackboneError(
            f"{name} cannot run at {preprocessing.size} px ({first_line}); choose another --size"
        ) from error
    height, width = feature_map.shape[-2:]
    patch_grid = (grid, grid) if grid is not None else (int(height), int(width))
    return LoadedBackbone(name, features, preprocessing, weights, patch_grid, feature_map.shape[1])


@contextmanager
def tf32_and_autotuning() -> Iterator[None]:
    """On CUDA, for the block: float32 convolutions and matmuls on TF32 tensor cores, and cuDNN's
    autotuner (a run's batches have one or two shapes, so each is tuned once). The previous
    settings come back afterwards."""
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32
    try:
        with torch.backends.cudnn.flags(
            enabled=True, benchmark=True, deterministic=False, allow_tf32=True
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul_precision)


@dataclass(frozen=True)
class ComputePlan:
    """How the backbone runs on a device: everything a GPU does differently from the CPU.

    CUDA: float32 on TF32 tensor cores. The stored features' error against float32 is 5.5x
    float16's own rounding for ResNet-50 (2.9x for ViT-S) against 52x (26x) for bfloat16 autocast
    (bench/RESULTS.md, bench/precision.py); every stage-2 experiment reads those features, and
    extraction should be decode-bound on a GPU anyway (expected from published ResNet-50 rates,
    not measured here). cuDNN autotuning, channels_last, crops staged in pinned memory and copied
    on side streams, so one batch's tokens copy back while the next one runs.
    CPU: plain float32 (bitwise what timm computes), no staging tricks.
    """

    compute_dtype: str  # part of the feature set's identity: never mixed in one feature set
    pinned: bool
    channels_last: bool
    side_streams: bool

    @classmethod
    def for_device(cls, device: torch.device) -> ComputePlan:
        on_cuda = device.type == "cuda"
        return cls(
            compute_dtype="tfloat32" if on_cuda else "float32",
            pinned=on_cuda,
            channels_last=on_cuda,
            side_streams=on_cuda,
        )


class Staging:
    """One batch's host buffers: its uint8 crops on the way in, its float16 tokens on the way
    out (pinned on CUDA), with the events that say when each copy has finished."""

    def __init__(self, *, frames: int, size: int, patches: int, dim: int, cuda: bool) -> None:
        self.crops = torch.empty((frames, 3, size, size), dtype=torch.uint8, pin_memory=cuda)
        self.tokens = torch.empty((frames, patches, dim), dtype=torch.float16, pin_memory=cuda)
        self.uploaded = torch.cuda.Event() if cuda else None  # crops may be refilled
        self.downloaded = torch.cuda.Event() if cuda else None  # tokens hold the batch
        self.awaiting_result = False

    @property
    def frames(self) -> int:
        return self.crops.shape[0]


class PendingTokens:
    """A submitted batch's float16 tokens, on their way to the host. ``seconds`` is how long the
    device computed it (CUDA events; the call itself on the CPU), known once the result is."""

    def __init__(
        self,
        staging: Staging,
        frames: int,
        *,
        computed: tuple[torch.cuda.Event, torch.cuda.Event] | None = None,
        seconds: float = 0.0,
    ) -> None:
        self.staging = staging
        self.frames = frames
        self.computed = computed  # events around the forward on CUDA
        self.seconds = seconds

    def result(self) -> np.ndarray:
        """(B, P, D) float16: a view of the staging buffer, valid until the second ``submit``
        after the one that returned this; copy it out before then."""
        if self.staging.downloaded is not None:
            self.staging.downloaded.synchronize()
        if self.computed is not None:
            started, finished = self.computed
            self.seconds = started.elapsed_time(finished) / 1000  # milliseconds
            self.computed = None
        self.staging.awaiting_result = False
        return self.staging.tokens[: self.frames].numpy()


class FrozenBackbone:
    """A loaded backbone placed on a device: uint8 crops in, float16 patch features out.

    ``submit`` starts a batch and returns at once on CUDA; two batches may be in flight, each in
    its own staging buffers (see ``ComputePlan`` for what runs where). On the CPU every step runs
    in order, in float32, so CPU features equal timm's ``forward_features`` cast to float16.
    """

    def __init__(self, loaded: LoadedBackbone, *, device: torch.device) -> None:
        self.loaded = loaded
        self.device = device
        self.plan = ComputePlan.for_device(device)
        memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        self.features = loaded.features.to(device).to(memory_format=memory_format)
        self.mean_std = loaded.preprocessing.mean_std(device)  # built once, kept on the device
        self.staging: list[Staging | None] = [None, None]  # allocated for the first batch
        self.turn = 0
        if self.plan.side_streams:
            self.upload = torch.cuda.Stream(device)
            self.download = torch.cuda.Stream(device)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def compute_dtype(self) -> str:
        return self.plan.compute_dtype

    def _next_staging(self, frames: int) -> Staging:
        staging = self.staging[self.turn]
        if staging is not None and staging.awaiting_result:
            raise RuntimeError("take a batch's result before submitting the one after the next")
        if staging is None or staging.frames < frames:
            if staging is not None and staging.uploaded is not None:
                staging.uploaded.synchronize()  # its crops may still be on the way in
            prep, loaded = self.loaded.preprocessing, self.loaded
            staging = Staging(
                frames=frames,
                size=prep.size,
                patches=loaded.grid[0] * loaded.grid[1],
                dim=loaded.dim,
                cuda=self.plan.pinned,
            )
            self.staging[self.turn] = staging
        self.turn = 1 - self.turn
        return staging

    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 on the device -> (B, P, D) float16 on the device."""
        if self.plan.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)  # while 4x smaller
        images = self.loaded.preprocessing.normalize(crops, mean_std=self.mean_std)  # float32
        with tf32_and_autotuning() if self.on_cuda else flush_denormals():
            tokens = self.features(images)  # (B, P, D)
        return tokens.to(torch.float16)

    @torch.inference_mode()
    def submit(self, clips: Sequence[torch.Tensor]) -> PendingTokens:
        """Start the backbone on the clips' crops ((T, 3, S, S) uint8 each), as one batch: crops
        in host memory (decoded on the CPU) are staged and uploaded, crops already on the device
        (a GPU decoder's) are used where they are."""
        frames = sum(len(clip) for clip in clips)
        staging = self._next_staging(frames)
        on_device = clips[0].device.type == "cuda"
        if not on_device and staging.uploaded is not None:
            staging.uploaded.synchronize()  # the last batch staged here has left
        staging.awaiting_result = True
        if not self.plan.side_streams:
            staged = staging.crops[:frames]
            torch.cat(list(clips), out=staged)  # (B, 3, S, S) uint8
            started = time.perf_counter()
            staging.tokens[:frames] = self._forward(staged)
            return PendingTokens(staging, frames, seconds=time.perf_counter() - started)
        compute = torch.cuda.current_stream(self.device)
        if on_device:
            for clip in clips:
                clip.record_stream(compute)  # made on a decoding thread's stream, read here
            crops = torch.cat(list(clips))  # (B, 3, S, S) uint8
        else:
            staged = staging.crops[:frames]
            torch.cat(list(clips), out=staged)  # (B, 3, S, S) uint8
            with torch.cuda.stream(self.upload):
                crops = staged.to(self.device, non_blocking=True)
                staging.uploaded.record(self.upload)  # type: ignore[union-attr]
            compute.wait_stream(self.upload)
            crops.record_stream(compute)  # made on the upload stream, used on this one
        computed = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        computed[0].record(compute)
        tokens = self._forward(crops)
        computed[1].record(compute)
        self.download.wait_stream(compute)
        with torch.cuda.stream(self.download):
            staging.tokens[:frames].copy_(tokens, non_blocking=True)
            staging.downloaded.record(self.download)  # type: ignore[union-attr]
        tokens.record_stream(self.download)
        return PendingTokens(staging, frames, computed=computed)

    def __call__(self, crops: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 -> (B, P, D) float16 numpy, waiting for it."""
        return self.submit([crops]).result().copy()
