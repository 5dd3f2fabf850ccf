"""SA-CT's `match` through scaled_dot_product_attention (`fused=True`) against its explicit
scores, softmax and einsum (the default), at ResNet-50 dims (T' = 4 mixed frames, P = 7x7,
d_k = 1152), in one run:

- a training episode: 5-way 5-shot, 25 queries, forward + backward through the embeddings;
- an evaluation batch of 25 queries: 5 episodes of 5-way 5-shot 1-query in one call, forward only.

For each: median wall time, peak memory (CUDA: the allocator's high-water mark above the inputs;
CPU: growth of the peak resident set of a fresh process), the ratios SDPA / einsum, and the largest
difference of the logits relative to their scale.

    .venv/bin/python bench/attention.py                      # CPU, 2 threads
    .venv/bin/python bench/attention.py --device cuda --json attention.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from sact.common.devices import resolve_device, synchronize
from sact.fewshot.model import SACT, SACTEmbedding

FRAMES, GRID, DIM, D_K = 8, (7, 7), 2048, 1152


@dataclass(frozen=True)
class Setting:
    name: str
    episodes: int
    way: int
    shot: int
    queries: int  # query videos per episode
    backward: bool


SETTINGS = (
    Setting("training episode, 25 queries, fwd + bwd", 1, 5, 5, 25, True),
    Setting("evaluation batch, 25 queries (5 episodes), fwd", 5, 5, 5, 5, False),
)


def embeddings(setting: Setting, device: torch.device, *, grad: bool):
    """Random float32 embeddings of one setting's videos (keys layer-normed, like the model's)."""
    generator = torch.Generator(device=device).manual_seed(0)
    frames, patches = FRAMES // 2, GRID[0] * GRID[1]

    def draw(videos: int) -> SACTEmbedding:
        shape = (videos, frames, patches, D_K)
        fields = [
            F.layer_norm(torch.randn(shape, generator=generator, device=device), (D_K,)),
            F.layer_norm(torch.randn(shape, generator=generator, device=device), (D_K,)),
            torch.randn(shape, generator=generator, device=device),
        ]
        return SACTEmbedding(*(field.requires_grad_(grad) for field in fields))

    e = setting.episodes
    return draw(e * setting.way * setting.shot), draw(e * setting.queries)


def runner(kind: str, setting: Setting, device: torch.device) -> Callable[[], torch.Tensor]:
    """One call of `kind` ("einsum" or "sdpa") on `setting`'s inputs, made once here."""
    model = SACT(dim=DIM, frames=FRAMES, grid=GRID, d_k=D_K).to(device)
    support, query = embeddings(setting, device, grad=setting.backward)

    def logits() -> torch.Tensor:
        return model.match_episodes(
            support, query, episodes=setting.episodes, way=setting.way, fused=kind == "sdpa"
        )  # (E, Q, N)

    def call() -> torch.Tensor:
        with torch.set_grad_enabled(setting.backward):
            result = logits()
            if setting.backward:
                result.sum().backward()
        return result.detach()

    return call


def seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def resident_peak() -> int:
    """Peak resident set of this process (VmHWM, which a spawned process starts afresh)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_peak(kind: str, setting: Setting, threads: int) -> int:
    torch.set_num_threads(threads)
    call = runner(kind, setting, torch.device("cpu"))
    before = resident_peak()
    call()
    return resident_peak() - before


def peak_bytes(kind: str, setting: Setting, device: torch.device, threads: int) -> int:
    """Memory one call needs above its inputs."""
    if device.type != "cuda":
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(cpu_peak, (kind, setting, threads))
    call = runner(kind, setting, device)
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def compare(setting: Setting, device: torch.device, repeats: int, threads: int) -> dict:
    rows = {}
    for kind in ("einsum", "sdpa"):
        call = runner(kind, setting, device)
        rows[kind] = {
            "seconds": seconds(call, device, repeats),
            "peak_bytes": peak_bytes(kind, setting, device, threads),
            "logits": call(),
        }
    reference, fused = rows["einsum"].pop("logits"), rows["sdpa"].pop("logits")
    scale = reference.abs().max().item()
    return {
        "setting": asdict(setting),
        "einsum": rows["einsum"],
        "sdpa": rows["sdpa"],
        "time_ratio": rows["sdpa"]["seconds"] / rows["einsum"]["seconds"],
        "memory_ratio": rows["sdpa"]["peak_bytes"] / max(1, rows["einsum"]["peak_bytes"]),
        "max_relative_logit_difference": (fused - reference).abs().max().item() / scale,
        "same_predictions": bool(torch.equal(fused.argmax(-1), reference.argmax(-1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    console = Console()
    results = [compare(setting, device, args.repeats, args.threads) for setting in SETTINGS]
    table = Table(
        title=f"SA-CT match: SDPA vs einsum, T'={FRAMES // 2} P={GRID[0] * GRID[1]} d_k={D_K}, "
        f"float32, {device}, load {os.getloadavg()[0]:.1f}"
    )
    for column in ("setting", "einsum s", "SDPA s", "time ratio", "einsum MiB", "SDPA MiB",
                   "memory ratio", "max |Δlogit| / max |logit|"):  # fmt: skip
        table.add_column(column, justify="left" if column == "setting" else "right")
    for result in results:
        einsum, sdpa = result["einsum"], result["sdpa"]
        table.add_row(
            result["setting"]["name"],
            f"{einsum['seconds']:.3f}",
            f"{sdpa['seconds']:.3f}",
            f"{result['time_ratio']:.2f}",
            f"{einsum['peak_bytes'] / 2**20:.0f}",
            f"{sdpa['peak_bytes'] / 2**20:.0f}",
            f"{result['memory_ratio']:.2f}",
            f"{result['max_relative_logit_difference']:.1e}",
        )
    console.print(table)
    if args.json:
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "device": str(device),
            "threads": args.threads,
            "torch": torch.__version__,
            "load": os.getloadavg()[0],
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if not all(r["max_relative_logit_difference"] < 1e-5 for r in results):
        console.print("SDPA and einsum logits differ by more than float32 tolerance")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
