"""The video decoders `sact extract --decoder` chooses from, and how close their frames must be.

    pyav             FFmpeg through PyAV (always installed), in the decoding worker processes
    torchcodec-cpu   FFmpeg through torchcodec, in the decoding worker processes
    torchcodec-cuda  the GPU's hardware video decoder (NVDEC) through torchcodec, in threads of the
                     main process (``sessions``), frames decoded, resized and cropped on the GPU
    pynvvideocodec   NVDEC through NVIDIA's PyNvVideoCodec, run as torchcodec-cuda is: it brings
                     its own demuxer and CUDA runtime and hands frames over by DLPack, so it needs
                     no build matched to torch or FFmpeg libraries, only the driver's NVDEC library

torchcodec and PyNvVideoCodec are optional dependencies (``pip install 'sact[torchcodec]'``, and
FFmpeg's shared libraries; ``pip install 'sact[nvdec]'``; docs/STORE.md). ``auto`` takes the first
of ``AUTO_ORDER`` that is installed and can run on the device: on a GPU a hardware decoder, else
PyAV. torchcodec's CPU decoder gives PyAV's crops bit for bit on the benchmark clips but was not
faster than PyAV here (bench/RESULTS.md), so ``auto`` does not take it. Frame folders
(``class/video/00001.jpg``) are read with PIL by every decoder.

Decoders can differ in the last bits of a pixel (another YUV-to-RGB conversion: rounding, chroma
upsampling), so the decoder and its version are part of a feature set's identity
(``extract.config.feature_set_identity``): features of two decoders never share a feature set.
``TOLERANCE`` says how close a decoder's frames and features must stay to PyAV's to be offered
as the default; ``compare_decoders`` measures it (tests/test_decoders.py, bench/gpu.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sact.common.errors import SactError
from sact.extract.decode import (
    MAX_FRAME_PIXELS,
    DecodeError,
    FrameRule,
    decode_all,
    open_video,
    sample_clip,
)
from sact.store.sampling import segment_centers

PYAV, TORCHCODEC_CPU, TORCHCODEC_CUDA = "pyav", "torchcodec-cpu", "torchcodec-cuda"
PYNVVIDEOCODEC = "pynvvideocodec"
DECODER_NAMES = (PYAV, TORCHCODEC_CPU, TORCHCODEC_CUDA, PYNVVIDEOCODEC)
AUTO = "auto"
# fastest first, as far as measured: the GPU decoders' order awaits bench/gpu.py's first run
AUTO_ORDER = (TORCHCODEC_CUDA, PYNVVIDEOCODEC, PYAV)
TORCHCODEC_INSTALL = "pip install 'sact[torchcodec]' (and FFmpeg's shared libraries, 4 to 7)"
PYNVVIDEOCODEC_INSTALL = "pip install 'sact[nvdec]'"


class DecoderUnavailableError(SactError):
    """A decoder asked for that cannot run here; the message is one line for the user."""


@dataclass(frozen=True)
class DecodedFrames:
    """The T sampled frames of a video as a tensor on the decoder's device."""

    images: torch.Tensor  # (T, 3, H, W) uint8 RGB
    indices: np.ndarray  # (T,) int64, which source frames these are
    num_frames: int  # frames the source has
    seconds: float  # wall time the decoding took


class PyAVDecoder:
    """FFmpeg through PyAV: ``extract.decode.sample_clip``. ``threads``: FFmpeg's threads per
    video (0: FFmpeg's choice); one is fastest when every core runs a decoding process."""

    name = PYAV
    on_gpu = False
    device = torch.device("cpu")

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads

    @property
    def version(self) -> str:
        return f"av {metadata.version('av')}"

    def sample(self, path: Path, frames: int, frame_rule: FrameRule) -> DecodedFrames:
        started = time.perf_counter()
        clip = sample_clip(path, frames, frame_rule=frame_rule, threads=self.threads)
        images = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2)
        seconds = time.perf_counter() - started
        return DecodedFrames(images, clip.indices, clip.num_frames, seconds)  # (T, 3, H, W)


def _torchcodec_problem(*, cuda: bool) -> str | None:
    """Why torchcodec cannot decode here (on the GPU when ``cuda``), or None when it can."""
    try:
        import torchcodec
        import torchcodec.decoders  # loads FFmpeg's libraries
    except ImportError as error:
        return f"torchcodec is not installed ({error}): {TORCHCODEC_INSTALL}"
    except (OSError, RuntimeError) as error:  # its FFmpeg libraries are missing or incompatible
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"torchcodec cannot load FFmpeg ({first_line}): {TORCHCODEC_INSTALL}"
    if cuda and "+cpu" in torchcodec.__version__:
        return f"torchcodec {torchcodec.__version__} is built without CUDA: install a CUDA build"
    if cuda and not torch.cuda.is_available():
        return "torchcodec-cuda decodes on a GPU, and torch sees none"
    return None


class TorchCodecDecoder:
    """torchcodec's ``VideoDecoder`` on the CPU, or on CUDA (NVDEC: decoding, colour conversion
    and the frames on the GPU). A file torchcodec cannot read is read again with PyAV to give
    the reason PyAV's decoder gives (``extract.decode``), or torchcodec's own if PyAV reads it."""

    def __init__(self, *, device: torch.device, threads: int = 1) -> None:
        self.on_gpu = device.type == "cuda"
        self.name = TORCHCODEC_CUDA if self.on_gpu else TORCHCODEC_CPU
        self.device = device  # with its index on CUDA: decoding threads start on device 0
        self.threads = threads

    @property
    def version(self) -> str:
        from torchcodec._core import get_ffmpeg_library_versions

        ffmpeg = get_ffmpeg_library_versions().get("ffmpeg_version", "unknown")
        return f"torchcodec {metadata.version('torchcodec')}, FFmpeg {ffmpeg}"

    def sample(self, path: Path, frames: int, frame_rule: FrameRule) -> DecodedFrames:
        from torchcodec.decoders import VideoDecoder

        started = time.perf_counter()
        if not path.is_file():  # a frame folder, a dangling link: PyAV's path says what it is
            return PyAVDecoder().sample(path, frames, frame_rule)
        try:
            decoder = VideoDecoder(
                str(path),
                device=str(self.device),
                seek_mode="exact",  # scans the packets once: the true frame count, exact frames
                num_ffmpeg_threads=self.threads,
                dimension_order="NHWC",  # as FFmpeg decodes, and as PyAV's frames are laid out
            )
            width, height = decoder.metadata.width or 0, decoder.metadata.height or 0
            if width * height > MAX_FRAME_PIXELS:
                open_video(path)  # raises PyAV's one-line refusal, before any frame is decoded
            count = len(decoder)
            if count == 0:
                raise DecodeError("no decodable video frames")
            indices = frame_rule(count, frames)
            unique, inverse = np.unique(indices, return_inverse=True)
            decoded = decoder.get_frames_at(indices=unique.tolist()).data  # (U, H, W, 3)
            picked = decoded[torch.from_numpy(inverse).to(decoded.device)]  # (T, H, W, 3)
            images = picked.permute(0, 3, 1, 2)  # (T, 3, H, W), channels last in memory
        except DecodeError:
            raise
        except Exception as error:  # torchcodec raises RuntimeError and ValueError alike
            raise _reason_for(self.name, path, error) from error
        return DecodedFrames(images, indices, count, time.perf_counter() - started)


def _pynvvideocodec_problem() -> str | None:
    """Why PyNvVideoCodec cannot decode here, or None when it can."""
    try:
        import PyNvVideoCodec  # noqa: F401  # loads the driver's libraries
    except ImportError as error:
        return f"PyNvVideoCodec is not installed ({error}): {PYNVVIDEOCODEC_INSTALL}"
    except (OSError, RuntimeError) as error:  # no driver, no NVDEC library in the container
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"PyNvVideoCodec cannot load NVIDIA's video libraries ({first_line})"
    if not torch.cuda.is_available():
        return "pynvvideocodec decodes on a GPU, and torch sees none"
    return None


class PyNvVideoCodecDecoder:
    """NVDEC through PyNvVideoCodec's ``SimpleDecoder``: decoded and converted to RGB on the GPU,
    on the calling thread's CUDA stream, and read as torch tensors by DLPack."""

    name = PYNVVIDEOCODEC
    on_gpu = True

    def __init__(self, *, device: torch.device) -> None:
        self.device = device  # with its index

    @property
    def version(self) -> str:
        import PyNvVideoCodec as nvc

        return f"PyNvVideoCodec {nvc.__version__}"

    def sample(self, path: Path, frames: int, frame_rule: FrameRule) -> DecodedFrames:
        import PyNvVideoCodec as nvc

        started = time.perf_counter()
        if not path.is_file():  # a frame folder, a dangling link: PyAV's path says what it is
            return PyAVDecoder().sample(path, frames, frame_rule)
        try:
            open_video(path)[0].close()  # PyAV's refusals of a bad header, before any decoding
            decoder = nvc.SimpleDecoder(
                str(path),
                gpu_id=self.device.index or 0,
                cuda_stream=torch.cuda.current_stream(self.device).cuda_stream,
                use_device_memory=True,
                need_scanned_stream_metadata=True,  # the frame count of a .webm, which has none
                output_color_type=nvc.OutputColorType.RGB,  # interleaved, as PyAV's frames
            )
            count = len(decoder)
            if count == 0:
                raise DecodeError("no decodable video frames")
            indices = frame_rule(count, frames)
            unique, inverse = np.unique(indices, return_inverse=True)
            decoded = decoder.get_batch_frames_by_index(unique.tolist())
            pixels = torch.stack([torch.from_dlpack(frame) for frame in decoded])  # (U, H, W, 3)
            picked = pixels[torch.from_numpy(inverse).to(pixels.device)]  # (T, H, W, 3)
            images = picked.permute(0, 3, 1, 2)  # (T, 3, H, W), channels last in memory
        except DecodeError:
            raise
        except Exception as error:  # PyNvVideoCodec raises RuntimeError and its own types
            raise _reason_for(self.name, path, error) from error
        return DecodedFrames(images, indices, count, time.perf_counter() - started)


def _reason_for(name: str, path: Path, error: Exception) -> DecodeError:
    """Why a file failed in decoder ``name``: PyAV's reason when PyAV fails too, else the
    decoder's own."""
    try:
        decode_all(path)
    except DecodeError as reason:
        return reason
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return DecodeError(f"{name} cannot decode it: {first_line or type(error).__name__}")


Decoder = PyAVDecoder | TorchCodecDecoder | PyNvVideoCodecDecoder


def decoder_problem(name: str, device: torch.device) -> str | None:
    """Why decoder ``name`` cannot run with the backbone on ``device``, or None."""
    if name == PYAV:
        return None
    if name in (TORCHCODEC_CUDA, PYNVVIDEOCODEC) and device.type != "cuda":
        return f"{name} decodes on the GPU the backbone runs on, and the device is {device}"
    if name == PYNVVIDEOCODEC:
        return _pynvvideocodec_problem()
    return _torchcodec_problem(cuda=name == TORCHCODEC_CUDA)


def resolve_decoder(name: str, device: torch.device, *, threads: int = 1) -> Decoder:
    """The decoder ``name`` (or ``auto``'s choice) for a backbone on ``device``; a decoder that
    cannot run here is refused in one line."""
    if name not in (AUTO, *DECODER_NAMES):
        raise DecoderUnavailableError(
            f"unknown decoder {name!r}; one of {AUTO}, {', '.join(DECODER_NAMES)}"
        )
    if name == AUTO:
        name = next(choice for choice in AUTO_ORDER if decoder_problem(choice, device) is None)
    problem = decoder_problem(name, device)
    if problem is not None:
        raise DecoderUnavailableError(f"--decoder {name}: {problem}")
    if name == PYAV:
        return PyAVDecoder(threads=threads)
    if name == TORCHCODEC_CPU:
        return TorchCodecDecoder(device=torch.device("cpu"), threads=threads)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if name == PYNVVIDEOCODEC:
        return PyNvVideoCodecDecoder(device=torch.device("cuda", index))
    return TorchCodecDecoder(device=torch.device("cuda", index), threads=threads)


# ---- how close a decoder's frames are to PyAV's ----


@dataclass(frozen=True)
class Tolerance:
    """How far a decoder's frames and features may be from PyAV's to be offered as default.

    Another YUV-to-RGB conversion of the same decoded pictures (BT.601 as FFmpeg's, other
    rounding, nearest-neighbour chroma) moves the pixels of an SSv2-like clip by 1.2 levels on
    average (3 at most), and ResNet-50's features (random init, 224 px) by 0.035 relative; the
    wrong colour matrix (BT.709 on BT.601 video) moves them by 3.9 levels (23 at most) and the
    features by 0.14 (bench/RESULTS.md; tests/test_decoders.py checks both sides on a clip).
    ``feature_relative`` is the norm of the feature difference over the norm of PyAV's features.
    """

    mean_abs_pixel: float = 1.5
    feature_relative: float = 0.05


TOLERANCE = Tolerance()


@dataclass(frozen=True)
class FrameDifference:
    """How a decoder's frames and features differ from a reference decoder's on some clips."""

    clips: int
    max_abs_pixel: int
    mean_abs_pixel: float
    feature_relative: float

    def within(self, tolerance: Tolerance = TOLERANCE) -> bool:
        return (
            self.mean_abs_pixel <= tolerance.mean_abs_pixel
            and self.feature_relative <= tolerance.feature_relative
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "max_abs_pixel": self.max_abs_pixel,
            "mean_abs_pixel": self.mean_abs_pixel,
            "feature_relative": self.feature_relative,
            "within_tolerance": self.within(),
        }


def frame_difference(
    reference: Sequence[torch.Tensor],
    candidate: Sequence[torch.Tensor],
    reference_features: Sequence[torch.Tensor],
    candidate_features: Sequence[torch.Tensor],
) -> FrameDifference:
    """Pixels ((T, 3, H, W) uint8 per clip) and features (any shape per clip) of two decoders."""
    largest, total, pixels = 0, 0.0, 0
    for ours, theirs in zip(reference, candidate, strict=True):
        if ours.shape != theirs.shape:
            raise ValueError(f"frames differ in shape: {tuple(ours.shape)}, {tuple(theirs.shape)}")
        difference = (ours.cpu().int() - theirs.cpu().int()).abs()
        largest = max(largest, int(difference.max()))
        total += float(difference.sum(dtype=torch.float64))
        pixels += difference.numel()
    ours_features = torch.cat([f.cpu().double().flatten() for f in reference_features])
    theirs_features = torch.cat([f.cpu().double().flatten() for f in candidate_features])
    relative = torch.linalg.vector_norm(theirs_features - ours_features) / torch.linalg.vector_norm(
        ours_features
    )
    return FrameDifference(
        clips=len(reference),
        max_abs_pixel=largest,
        mean_abs_pixel=total / pixels,
        feature_relative=float(relative),
    )


def compare_decoders(
    reference: Decoder,
    candidate: Decoder,
    paths: Sequence[Path],
    *,
    frames: int,
    features: Any,  # (B, 3, S, S) uint8 crops on any device -> (B, P, D) features on the CPU
    preprocessing: Any,  # extract.backbone.Preprocessing
) -> FrameDifference:
    """The candidate's frames and features against the reference's on ``paths``: the same T
    frames at segment centers, resized and cropped by the same rule on each decoder's device."""
    pixels: list[list[torch.Tensor]] = [[], []]
    feature_lists: list[list[torch.Tensor]] = [[], []]
    for path in paths:
        for slot, decoder in enumerate((reference, candidate)):
            clip = decoder.sample(path, frames, segment_centers)
            pixels[slot].append(clip.images)
            crops = preprocessing.resize_and_crop_images(clip.images)  # (T, 3, S, S)
            feature_lists[slot].append(features(crops))
    return frame_difference(pixels[0], pixels[1], feature_lists[0], feature_lists[1])
