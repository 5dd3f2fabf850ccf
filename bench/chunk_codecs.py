"""Which chunk codec should the feature store use? Size and read speed of each candidate on
real-shaped float16 features, side by side in one run.

The features come from real backbone forwards (timm, random-init weights: no pretrained weights
can be downloaded here) on synthetic action videos rendered by ``sact.demo.synthetic`` at the
backbone's input size: ResNet-50 at 224 px (7×7×2048 after the last ReLU, the store's main case)
and ViT-S/16 at 224 px (14×14×384 patch tokens, no ReLU: signed values). One chunk is one video,
(T, P, D) float16, as in the store (docs/STORE.md).

For each codec: the compression ratio, and encode / decode GB per CPU-second of one core
(uncompressed bytes; blosc with one thread) on every chunk, repeated for at least ``--seconds`` of
CPU time. With ``+crc32c`` the decode also checks the chunk's crc32c, as zarr's ``crc32c`` codec
does on read. Then the store's own read path: a shard written with the codec and read back whole
with ``FeatureSet.read`` (files in the page cache), GB per CPU-second over all of zarr's threads.
CPU time rather than wall time, so the numbers hold on a machine shared with other jobs.

    .venv/bin/python bench/chunk_codecs.py [--videos 8] [--seconds 0.5] [--json codecs.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numcodecs.blosc
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from sact.demo.synthetic import ACTION_CLASSES, render_action
from sact.extract.backbone import FrozenBackbone, load_backbone
from sact.store.backends import open_feature_set
from sact.store.feature_set import VideoRecord
from sact.store.zarr_store import FeatureSetWriter, ShardResult, open_root

BACKBONES = {"resnet50 224px": "resnet50", "vit_small 224px": "vit_small_patch16_224"}
FLOAT16_BYTES = 2


@dataclass(frozen=True)
class Candidate:
    name: str
    codec: Any  # numcodecs codec for the per-core timing; None: raw bytes
    compressors: tuple[Any, ...]  # the same as a zarr v3 codec list, for the store read
    crc32c: bool = False


def with_crc32c(candidate: Candidate) -> Candidate:
    """The candidate followed by zarr's crc32c codec: 4 bytes per chunk, checked on every read."""
    return Candidate(
        f"{candidate.name} +crc32c",
        candidate.codec,
        (*candidate.compressors, Crc32cCodec()),
        crc32c=True,
    )


def candidates() -> list[Candidate]:
    def zstd(level: int) -> Candidate:
        label = f"zstd-{level}" + (" (format 1)" if level == 0 else "")
        return Candidate(label, numcodecs.Zstd(level=level), (ZstdCodec(level=level),))

    def blosc(cname: str, level: int, shuffle: str) -> Candidate:
        codes = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
        return Candidate(
            f"blosc {cname}-{level} {shuffle}",
            numcodecs.Blosc(cname=cname, clevel=level, shuffle=codes[shuffle]),
            (BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=FLOAT16_BYTES),),
        )

    none = Candidate("none", None, ())
    lz4_bitshuffle = blosc("lz4", 5, "bitshuffle")
    return [
        none,
        with_crc32c(none),
        *(zstd(level) for level in (0, 1, 3, 9)),
        with_crc32c(zstd(1)),
        blosc("lz4", 5, "noshuffle"),
        blosc("lz4", 5, "shuffle"),
        lz4_bitshuffle,
        with_crc32c(lz4_bitshuffle),
        blosc("zstd", 1, "shuffle"),
        blosc("zstd", 1, "bitshuffle"),
    ]


def real_features(backbone: str, *, videos: int, frames: int, seed: int) -> np.ndarray:
    """(videos, T, P, D) float16 from a random-init timm backbone on synthetic action videos."""
    loaded = load_backbone(backbone, random_init=True, seed=seed)
    frozen = FrozenBackbone(loaded, device=torch.device("cpu"))
    size = loaded.preprocessing.size
    rng = np.random.default_rng(seed)
    out = []
    for index in range(videos):
        action = ACTION_CLASSES[index % len(ACTION_CLASSES)]
        clip = render_action(action, frames=frames, size=size, distractors=2, rng=rng)
        crops = loaded.preprocessing.resize_and_crop(clip)  # (T, 3, S, S)
        out.append(frozen(crops))  # (T, P, D)
    return np.ascontiguousarray(np.stack(out))  # (V, T, P, D)


def per_core_rate(
    work: Callable[[], object], nbytes: int, seconds: float, *, clock: Callable[[], float]
) -> float:
    """GB per CPU-second of ``work`` (which handles ``nbytes`` uncompressed bytes), repeated for
    at least ``seconds`` of CPU time. CPU time, not wall time: on a machine shared with other jobs
    it still measures what one core does (``time.thread_time`` for single-threaded work,
    ``time.process_time`` for work that zarr spreads over its threads)."""
    work()
    rounds, start = 0, clock()
    while (spent := clock() - start) < seconds or rounds == 0:
        work()
        rounds += 1
    return rounds * nbytes / spent / 1e9


def measure_codec(candidate: Candidate, chunks: list[np.ndarray], seconds: float) -> dict:
    raw = sum(chunk.nbytes for chunk in chunks)
    if candidate.codec is None:
        encoded = [chunk.tobytes() for chunk in chunks]

        def decode() -> None:
            for data, chunk in zip(encoded, chunks, strict=True):
                if candidate.crc32c:
                    google_crc32c.value(data)
                np.frombuffer(data, dtype=np.float16).reshape(chunk.shape).copy()

        def encode() -> None:
            for chunk in chunks:
                data = chunk.tobytes()
                if candidate.crc32c:
                    google_crc32c.value(data)

    else:
        encoded = [candidate.codec.encode(chunk) for chunk in chunks]

        def decode() -> None:
            for data, chunk in zip(encoded, chunks, strict=True):
                if candidate.crc32c:
                    google_crc32c.value(data)
                out = np.frombuffer(candidate.codec.decode(data), dtype=np.float16)
                assert out.size == chunk.size

        def encode() -> None:
            for chunk in chunks:
                data = candidate.codec.encode(chunk)
                if candidate.crc32c:
                    google_crc32c.value(data)

    for data, chunk in zip(encoded, chunks, strict=True):  # lossless, or not a candidate
        restored = data if candidate.codec is None else candidate.codec.decode(data)
        assert np.array_equal(np.frombuffer(restored, dtype=np.float16), chunk.ravel())
    stored = sum(len(data) for data in encoded) + 4 * len(chunks) * candidate.crc32c
    return {
        "ratio": raw / stored,
        "encode_gb_s": per_core_rate(encode, raw, seconds, clock=time.thread_time),
        "decode_gb_s": per_core_rate(decode, raw, seconds, clock=time.thread_time),
    }


def store_read_rate(
    candidate: Candidate, features: np.ndarray, folder: Path, seconds: float
) -> float:
    """GB per CPU-second of ``FeatureSet.read`` over a whole shard written with the candidate:
    file reads, shard index, crc32c, decompression and copies, all of zarr's threads counted."""
    videos, frames, patches, dim = features.shape
    location = str(folder / f"{len(list(folder.iterdir()))}.zarr")
    writer = FeatureSetWriter.create_or_open(
        open_root(location, mode="a"),
        "bench",
        identity={"backbone": "bench", "frames": frames, "dim": dim},
        provenance={},
        videos=[VideoRecord(f"v{i}", f"v{i}.mp4", "c") for i in range(videos)],
        frames=frames,
        patches=patches,
        dim=dim,
        grid=(patches, 1),
        shard_size=videos,
        compressors=candidate.compressors,
    )
    writer.write_shard(
        0,
        ShardResult(
            features=features,
            frame_index=np.zeros((videos, frames), dtype=np.int32),
            num_frames=np.full(videos, frames, dtype=np.int32),
            errors=[""] * videos,
        ),
    )
    feature_set = open_feature_set(location)
    rows = np.arange(videos)
    assert np.array_equal(feature_set.read(rows), features)
    return per_core_rate(
        lambda: feature_set.read(rows), features.nbytes, seconds, clock=time.process_time
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="videos per backbone")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per measurement")
    parser.add_argument("--store-copies", type=int, default=8, help="store read: videos × this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    console = Console()
    numcodecs.blosc.use_threads = False  # one core
    torch.manual_seed(args.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sact-bench-codecs-") as folder:
        for label, backbone in BACKBONES.items():
            with console.status(f"{label}: features of {args.videos} synthetic videos"):
                features = real_features(
                    backbone, videos=args.videos, frames=args.frames, seed=args.seed
                )
            zeros = float(np.mean(features == 0))
            store_features = np.concatenate([features] * args.store_copies)  # (V·copies, T, P, D)
            for candidate in candidates():
                with console.status(f"{label}: {candidate.name}"):
                    measured = measure_codec(candidate, list(features), args.seconds)
                    measured["store_read_gb_s"] = store_read_rate(
                        candidate, store_features, Path(folder), args.seconds
                    )
                results.append(
                    {
                        "features": label,
                        "shape": list(features.shape[1:]),
                        "zeros": zeros,
                        "codec": candidate.name,
                        **measured,
                    }
                )
    for label in BACKBONES:
        rows = [result for result in results if result["features"] == label]
        frames, patches, dim = rows[0]["shape"]
        table = Table(
            title=f"{label}: chunks of {frames}×{patches}×{dim} float16 "
            f"({100 * rows[0]['zeros']:.0f}% zeros), {args.videos} videos",
            caption="GB of uncompressed data per CPU-second (one core); store read: "
            "FeatureSet.read of a whole shard from files in the page cache",
        )
        for column in ("codec", "ratio", "encode GB/s", "decode GB/s", "store read GB/s"):
            table.add_column(column, justify="left" if column == "codec" else "right")
        for result in rows:
            table.add_row(
                result["codec"],
                f"{result['ratio']:.2f}",
                f"{result['encode_gb_s']:.2f}",
                f"{result['decode_gb_s']:.2f}",
                f"{result['store_read_gb_s']:.2f}",
            )
        console.print(table)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    console.print_json(json.dumps(record))


if __name__ == "__main__":
    main()
