"""The video decoders (issue 22): which one a run gets, that it is part of the feature set's
identity, that a missing optional one is refused in one line, and how close the frames of two
decoders are (the CPU half always runs; the GPU half needs CUDA and torchcodec's CUDA build)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import zarr
from rich.console import Console
from typer.testing import CliRunner

from sact.cli import app
from sact.extract import decoders, sizing
from sact.extract.backbone import FrozenBackbone, load_backbone
from sact.extract.decoders import (
    TOLERANCE,
    DecoderUnavailableError,
    PyAVDecoder,
    TorchCodecDecoder,
    compare_decoders,
    decoder_problem,
    frame_difference,
    resolve_decoder,
)
from sact.extract.pipeline import run_extraction
from sact.store.feature_set import FeatureStoreError
from sact.testing.clips import KINETICS, SSV2, write_realistic_clip
from sact.testing.extraction import tiny_cli_options, tiny_config

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture
def without_torchcodec(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchcodec cannot be imported, whether or not it is installed here."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)


@pytest.fixture
def with_fake_torchcodec(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchcodec counts as installed (its decoding is never reached in these tests)."""
    monkeypatch.setattr(decoders, "_torchcodec_problem", lambda *, cuda: None)
    monkeypatch.setattr(TorchCodecDecoder, "version", property(lambda self: "torchcodec 0.0"))


@pytest.fixture(scope="module")
def ssv2_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_realistic_clip(
        tmp_path_factory.mktemp("clips") / "ssv2.webm", SSV2, seed=0, frames=24
    )


# ---- which decoder ----


def test_auto_is_pyav_without_torchcodec(
    without_torchcodec: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    assert resolve_decoder("auto", CPU).name == "pyav"
    assert resolve_decoder("auto", torch.device("cuda")).name == "pyav"


def test_auto_takes_a_hardware_decoder_on_a_gpu_and_pyav_on_a_cpu(
    with_fake_torchcodec: None,
) -> None:
    assert resolve_decoder("auto", CPU).name == "pyav"  # torchcodec's CPU decoder: not faster
    chosen = resolve_decoder("auto", torch.device("cuda", 0))
    assert chosen.name == "torchcodec-cuda" and chosen.on_gpu


def test_a_decoder_asked_for_is_the_one_given(with_fake_torchcodec: None) -> None:
    for name in ("pyav", "torchcodec-cpu"):
        assert resolve_decoder(name, CPU).name == name
    assert resolve_decoder("pyav", torch.device("cuda")).name == "pyav"


def test_a_missing_or_misplaced_decoder_is_refused_in_one_line(
    without_torchcodec: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DecoderUnavailableError, match=r"not installed.*sact\[torchcodec\]"):
        resolve_decoder("torchcodec-cpu", CPU)
    for gpu_decoder in ("torchcodec-cuda", "pynvvideocodec"):
        with pytest.raises(DecoderUnavailableError, match=r"decodes on the GPU.*device is cpu"):
            resolve_decoder(gpu_decoder, CPU)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    with pytest.raises(DecoderUnavailableError, match=r"not installed.*sact\[nvdec\]"):
        resolve_decoder("pynvvideocodec", torch.device("cuda", 0))
    with pytest.raises(DecoderUnavailableError, match="unknown decoder 'nvdec'"):
        resolve_decoder("nvdec", CPU)
    assert decoder_problem("pyav", CPU) is None


def assert_one_line_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_the_command_refuses_a_missing_decoder_in_one_line(
    video_folder: Path, tmp_path: Path, without_torchcodec: None
) -> None:
    options = ["--videos", str(video_folder), "--out", str(tmp_path / "f.zarr")]
    options += tiny_cli_options()
    missing = runner.invoke(app, ["extract", *options, "--decoder", "torchcodec-cpu"])
    assert_one_line_error(missing, "--decoder torchcodec-cpu", "pip install 'sact[torchcodec]'")
    on_cpu = runner.invoke(app, ["extract", *options, "--decoder", "torchcodec-cuda"])
    assert_one_line_error(on_cpu, "--decoder torchcodec-cuda", "device is cpu")
    unknown = runner.invoke(app, ["extract", *options, "--decoder", "nvdec"])
    assert_one_line_error(unknown, "--decoder must be one of auto, pyav")
    assert not (tmp_path / "f.zarr").exists()


# ---- the decoder in the feature set's identity ----


def extract(videos: Path, out: Path, **options: Any) -> Any:
    return run_extraction(tiny_config(videos, out, **options), console=Console(quiet=True))


def test_the_decoder_and_its_version_are_in_the_identity(
    video_folder: Path, tmp_path: Path, with_fake_torchcodec: None
) -> None:
    out = tmp_path / "feats.zarr"
    summary = extract(video_folder, out, decoder="pyav")
    assert summary.done == 5 and summary.pipeline["decoder"] == "pyav"
    attrs = zarr.open_group(str(out), mode="r")["tiny"].attrs["sact"]
    assert attrs["decoder"] == "pyav" and attrs["decoder_version"] == f"av {av.__version__}"
    assert {"decoder", "decoder_version"} <= set(attrs["identity"])
    assert attrs["pipeline"]["decoder"] == "pyav"
    with pytest.raises(FeatureStoreError, match="decoder: stored 'pyav', asked 'torchcodec-cpu'"):
        extract(video_folder, out, decoder="torchcodec-cpu")
    assert extract(video_folder, out, decoder="pyav").extracted_now == 0  # the same one resumes


def test_a_set_written_before_the_decoder_was_recorded_resumes_with_pyav_only(
    video_folder: Path, tmp_path: Path, with_fake_torchcodec: None
) -> None:
    out = tmp_path / "feats.zarr"
    extract(video_folder, out, decoder="pyav", shard_size=2)
    group = zarr.open_group(str(out), mode="a")["tiny"]
    attrs = dict(group.attrs["sact"])
    for key in ("decoder", "decoder_version"):  # as written before issue 22
        del attrs[key]
    attrs["identity"] = [key for key in attrs["identity"] if not key.startswith("decoder")]
    group.attrs["sact"] = attrs
    features = np.asarray(group["features"][:])
    group["done"][4:] = False  # its last shard was not finished
    with pytest.raises(FeatureStoreError, match="decoder: stored 'pyav', asked 'torchcodec-cpu'"):
        extract(video_folder, out, decoder="torchcodec-cpu", shard_size=2)
    resumed = extract(video_folder, out, decoder="pyav", shard_size=2)
    assert resumed.extracted_now == 1 and resumed.done == 5
    np.testing.assert_array_equal(np.asarray(group["features"][:]), features)


# ---- the pipeline sized by the machine ----


def test_the_pipeline_is_sized_by_the_cores_and_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    common = {"decoder": "pyav", "decoder_version": "av", "frames": 8}
    on_cpu = sizing.plan_pipeline(**common, decoder_on_gpu=False, device=CPU, cores=8)
    assert (on_cpu.workers, on_cpu.batch_size) == (2, 16)
    assert sizing.plan_pipeline(**common, decoder_on_gpu=False, device=CPU, cores=2).workers == 1
    cuda = torch.device("cuda")
    cpu_decoding = sizing.plan_pipeline(**common, decoder_on_gpu=False, device=cuda, cores=16)
    assert (cpu_decoding.workers, cpu_decoding.batch_size) == (14, 32)
    monkeypatch.setattr(sizing, "nvdec_engines", lambda device: 7)
    gpu_decoding = sizing.plan_pipeline(**common, decoder_on_gpu=True, device=cuda, cores=16)
    assert gpu_decoding.workers == 14 and "7 on this card" in gpu_decoding.describe()
    few_cores = sizing.plan_pipeline(**common, decoder_on_gpu=True, device=cuda, cores=6)
    assert few_cores.workers == 4
    chosen = sizing.plan_pipeline(
        **common, decoder_on_gpu=False, device=cuda, cores=16, workers=3, batch_size=5
    )
    assert (chosen.workers, chosen.batch_size) == (3, 5) and "--workers" in chosen.describe()


def test_a_run_reports_its_rate_against_its_two_bounds(video_folder: Path, tmp_path: Path) -> None:
    summary = extract(video_folder, tmp_path / "feats.zarr", decoder="pyav")
    assert summary.decode_bound > 0 and summary.backbone_bound > 0
    assert summary.over_bound == pytest.approx(
        summary.videos_per_second / min(summary.decode_bound, summary.backbone_bound)
    )


# ---- how close two decoders' frames are ----


def tiny_features() -> tuple[Any, Any]:
    """A tiny random-init backbone as ``compare_decoders`` wants it, and its preprocessing."""
    loaded = load_backbone("resnet10t", random_init=True, size=32)
    frozen = FrozenBackbone(loaded, device=CPU)
    return (lambda crops: torch.from_numpy(frozen(crops.cpu()))), loaded.preprocessing


def converted(frame: av.VideoFrame, *, red: float, blue: float) -> torch.Tensor:
    """(3, H, W) uint8: ``frame``'s YUV 4:2:0 picture turned into RGB here, with the luma weights
    ``red`` and ``blue`` (BT.601: 0.299, 0.114; BT.709: 0.2126, 0.0722), limited range and
    nearest-neighbour chroma: another conversion than FFmpeg's."""
    height, width = frame.height, frame.width
    planes = frame.to_ndarray(format="yuv420p").astype(np.float64)  # (H * 3/2, W)
    chroma = planes[height:].reshape(2, height // 2, width // 2)  # U, V at half size
    cb, cr = (plane.repeat(2, axis=0).repeat(2, axis=1) for plane in chroma)  # (H, W) each
    luma = (planes[:height] - 16) * 255 / 219
    cb, cr = (cb - 128) * 255 / 224, (cr - 128) * 255 / 224
    r = luma + 2 * (1 - red) * cr
    b = luma + 2 * (1 - blue) * cb
    g = (luma - red * r - blue * b) / (1 - red - blue)
    rgb = np.clip(np.rint(np.stack([r, g, b])), 0, 255).astype(np.uint8)  # (3, H, W)
    return torch.from_numpy(rgb)


def test_pyav_frames_do_not_depend_on_its_threads(ssv2_clip: Path) -> None:
    features, preprocessing = tiny_features()
    difference = compare_decoders(
        PyAVDecoder(threads=1),
        PyAVDecoder(threads=0),
        [ssv2_clip],
        frames=4,
        features=features,
        preprocessing=preprocessing,
    )
    assert difference.max_abs_pixel == 0 and difference.feature_relative == 0.0


def test_the_tolerance_admits_another_conversion_and_refuses_a_wrong_colour_matrix(
    ssv2_clip: Path,
) -> None:
    """The CPU half of the tolerance check: PyAV's frames against the same pictures converted
    to RGB another way (BT.601 as FFmpeg, other rounding and chroma upsampling: within), and
    with BT.709's matrix on BT.601 video (a decoder that got the colours wrong: outside)."""
    features, preprocessing = tiny_features()
    with av.open(str(ssv2_clip)) as container:
        pictures = list(container.decode(video=0))[::6][:4]
    reference = torch.stack([torch.from_numpy(p.to_ndarray(format="rgb24")) for p in pictures])
    reference = reference.permute(0, 3, 1, 2)  # (T, 3, H, W)

    def difference(red: float, blue: float) -> Any:
        candidate = torch.stack([converted(p, red=red, blue=blue) for p in pictures])
        return frame_difference(
            [reference],
            [candidate],
            [features(preprocessing.resize_and_crop_images(reference))],
            [features(preprocessing.resize_and_crop_images(candidate))],
        )

    another_conversion = difference(0.299, 0.114)
    wrong_matrix = difference(0.2126, 0.0722)
    assert 0 < another_conversion.mean_abs_pixel <= TOLERANCE.mean_abs_pixel
    assert another_conversion.within(), another_conversion
    assert wrong_matrix.mean_abs_pixel > 2 * another_conversion.mean_abs_pixel
    assert not wrong_matrix.within(), wrong_matrix


def test_torchcodec_on_the_cpu_gives_pyav_frames(ssv2_clip: Path) -> None:
    problem = decoder_problem("torchcodec-cpu", CPU)
    if problem is not None:
        pytest.skip(problem)
    features, preprocessing = tiny_features()
    difference = compare_decoders(
        PyAVDecoder(),
        resolve_decoder("torchcodec-cpu", CPU),
        [ssv2_clip],
        frames=4,
        features=features,
        preprocessing=preprocessing,
    )
    assert difference.within(), difference


@pytest.mark.parametrize("name", ["torchcodec-cuda", "pynvvideocodec"])
def test_the_gpu_decoder_gives_pyav_frames_within_the_tolerance(name: str, tmp_path: Path) -> None:
    """The GPU half: an NVDEC decoder against PyAV on an SSv2-like and a Kinetics-like clip, the
    features of a tiny backbone on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda", 0)
    problem = decoder_problem(name, cuda)
    if problem is not None:
        pytest.skip(problem)
    clips = [
        write_realistic_clip(tmp_path / "ssv2.webm", SSV2, seed=1, frames=24),
        write_realistic_clip(tmp_path / "kinetics.mp4", KINETICS, seed=1, frames=30),
    ]
    loaded = load_backbone("resnet10t", random_init=True, size=64)
    frozen = FrozenBackbone(loaded, device=cuda)
    difference = compare_decoders(
        PyAVDecoder(),
        resolve_decoder(name, cuda),
        clips,
        frames=8,
        features=lambda crops: torch.from_numpy(frozen(crops.to(cuda))),
        preprocessing=loaded.preprocessing,
    )
    print(difference)
    assert difference.within(), difference
