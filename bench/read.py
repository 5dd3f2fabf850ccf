"""Read throughput of a feature store, in episodes per second, from three places side by side:
a local zarr store, its HDF5 copy (``sact export``), and the same store on an S3-compatible server
(moto's server mode, started here on 127.0.0.1).

An episode is what stage 2 reads per training step: 5-way 5-shot with 5 queries per class, 50
distinct videos drawn at random. Videos have ResNet-50's size by default (T=8 frames, P=49 patches,
D=2048 channels, float16: 1.6 MB each), synthetic features (``sact.testing.stores``) after a ReLU
(half zeros). Each place is read by one reader and by four reader threads at once (as
``fewshot.features.Prefetcher`` does). The zarr store is as sact writes it (zstd-compressed chunks
in shards of 64 videos); the HDF5 copy is uncompressed, one chunk per video, as ``sact export``
writes it.

    .venv/bin/python bench/read.py [--videos 200] [--episodes 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sact.store.backends import open_feature_set
from sact.store.feature_set import FeatureSet
from sact.store.hdf5 import export_hdf5
from sact.testing.stores import write_synthetic_store
from tests.faults.s3 import local_s3_server, make_bucket, s3_environment

WAYS, SHOTS, QUERIES = 5, 5, 5
EPISODE_VIDEOS = WAYS * (SHOTS + QUERIES)  # 50
READER_THREADS = 4


def episodes(count: int, videos: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(videos, EPISODE_VIDEOS, replace=False) for _ in range(count)]


def time_reads(feature_set: FeatureSet, drawn: list[np.ndarray], threads: int) -> float:
    """Seconds to read every episode in ``drawn``, with ``threads`` readers sharing the list."""
    start = time.perf_counter()
    if threads == 1:
        for indices in drawn:
            feature_set.read(indices)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(feature_set.read, drawn))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--patches", type=int, default=49)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    console = Console()
    video_mb = args.frames * args.patches * args.dim * 2 / 1e6
    side = round(args.patches**0.5)
    # One class: reads never look at labels. relu: half of the values are 0, as after a ResNet.
    shape = dict(
        classes=1,
        videos_per_class=args.videos,
        frames=args.frames,
        grid=(side, args.patches // side),
        dim=args.dim,
        relu=True,
    )
    if args.videos < EPISODE_VIDEOS:
        parser.error(f"--videos must be at least {EPISODE_VIDEOS}, one episode's worth")

    with local_s3_server() as endpoint:
        os.environ.update(s3_environment(endpoint))
        with tempfile.TemporaryDirectory(prefix="sact-bench-read-") as folder:
            local = str(Path(folder) / "feats.zarr")
            hdf5 = Path(folder) / "feats.h5"
            remote = f"{make_bucket()}/feats.zarr"
            for location in (local, remote):
                with console.status(f"writing {location}"):
                    write_synthetic_store(
                        location, name="bench", shard_size=args.shard_size, seed=args.seed, **shape
                    )
            export_hdf5(local, hdf5, console=console)
            places = {
                "local zarr": local,
                "HDF5 (.h5)": str(hdf5),
                "S3 zarr (moto, 127.0.0.1)": remote,
            }
            drawn = episodes(args.episodes, args.videos, args.seed)
            reference = open_feature_set(local).read(drawn[0])
            results = []
            for place, location in places.items():
                feature_set = open_feature_set(location)
                assert np.array_equal(feature_set.read(drawn[0]), reference), place
                for threads in (1, READER_THREADS):
                    seconds = time_reads(feature_set, drawn, threads)
                    results.append(
                        {
                            "store": place,
                            "threads": threads,
                            "episodes_per_s": len(drawn) / seconds,
                            "mb_per_s": len(drawn) * EPISODE_VIDEOS * video_mb / seconds,
                        }
                    )

    baseline = {r["threads"]: r["episodes_per_s"] for r in results if r["store"] == "local zarr"}
    table = Table(
        title=(
            f"read throughput: {args.episodes} random episodes of {EPISODE_VIDEOS} videos "
            f"({WAYS}-way {SHOTS}-shot, {QUERIES} queries/class), {args.videos} videos of "
            f"T={args.frames} P={args.patches} D={args.dim} fp16 ({video_mb:.2f} MB each)"
        )
    )
    for column in ("store", "reader threads", "episodes/s", "MB/s", "× local zarr"):
        table.add_column(column, justify="left" if column == "store" else "right")
    for result in results:
        table.add_row(
            result["store"],
            str(result["threads"]),
            f"{result['episodes_per_s']:.2f}",
            f"{result['mb_per_s']:.0f}",
            f"{result['episodes_per_s'] / baseline[result['threads']]:.2f}",
        )
    console.print(table)
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    console.print_json(json.dumps(record))


if __name__ == "__main__":
    main()
