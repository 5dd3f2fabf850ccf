"""How many of SA-CT's predictions each precision policy flips against float64, on trained runs.

For each SA-CT run: its test videos embedded once in float64 (the reference: the model and the
features widened) and once under each policy (fewshot/precision.py) the device can run, then the
same episodes matched (`match` is IEEE float32 under every policy; float64 for the reference);
a flip is a query whose predicted class differs from the reference's.

On a CPU the TF32 policies are emulated: a copy of the model whose every float32 linear layer and
convolution computes on operands rounded to TF32's 10-bit mantissa (weights once, inputs as they
arrive), products summed in float32, as tensor cores do (bench/precision.py's rounding); layers
under half-precision autocast are left to autocast. On CUDA they run on the tensor cores.

    .venv/bin/python bench/flips.py sact-demo/motion/runs/sact-seed0 [RUN...] [--episodes 1000]

CPU autocast is a proxy for CUDA's (same op lists, same output dtypes). bench/model.py runs the
same measurement on a run it trains itself.
"""

from __future__ import annotations

import argparse
import copy
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sact.fewshot import SACT
from sact.fewshot.accuracy import concat_embeddings, episode_logits
from sact.fewshot.checkpoints import read_checkpoint
from sact.fewshot.episodes import EpisodeSampler, VideoPool, build_pool, resolve_split
from sact.fewshot.features import SplitFeatures, segment_frames
from sact.fewshot.model import SACTEmbedding
from sact.fewshot.precision import POLICIES, resolve_precision
from sact.store.backends import open_feature_set

# this script's folder is on the path when it runs
from precision import round_to_tf32  # isort: skip

WAY = 5
EMBED_BATCH = 32  # videos per embedding forward


def with_emulated_tf32(model: SACT) -> SACT:
    """A copy of `model` whose float32 linear layers and convolutions compute on TF32 operands."""
    emulated = copy.deepcopy(model)

    def rounded_inputs(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        if torch.is_autocast_enabled("cpu"):  # a half-precision path: autocast rounds it
            return None
        return tuple(round_to_tf32(x) if x.dtype == torch.float32 else x for x in inputs)

    for module in emulated.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.weight.data = round_to_tf32(module.weight.data)
            module.register_forward_pre_hook(rounded_inputs)
    return emulated


@torch.no_grad()
def embed_all(model: SACT, videos: torch.Tensor, context: AbstractContextManager) -> SACTEmbedding:
    """Every video embedded under `context`, in batches: one embedding (V, ...)."""
    parts = []
    for start in range(0, len(videos), EMBED_BATCH):
        with context:
            parts.append(model.embed(videos[start : start + EMBED_BATCH]))
    return concat_embeddings(parts)


@torch.no_grad()
def policy_flips(
    model: SACT,
    videos: torch.Tensor,
    pool: VideoPool,
    *,
    device: torch.device,
    shots: list[int],
    episodes: int,
    queries: int,
    seed: int,
) -> dict:
    """Flips of each policy against float64 on `episodes` episodes per shot of `pool`, whose
    videos (V, T, P, D) are `videos`, in pool order."""
    model = model.eval().to(device)
    videos = videos.to(device)
    reference_model = copy.deepcopy(model).double()
    reference = embed_all(reference_model, videos.double(), nullcontext())
    rows = np.arange(len(pool))
    settings = {
        shot: EpisodeSampler(pool, way=WAY, shot=shot, queries=queries).episodes(episodes, seed)
        for shot in shots
    }

    def predictions(head: SACT, embedding, context) -> dict[int, torch.Tensor]:
        return {
            shot: torch.cat(
                [
                    logits.argmax(dim=-1)
                    for logits in episode_logits(head, embedding, rows, sampled, autocast=context)
                ]
            )
            for shot, sampled in settings.items()
        }

    expected = predictions(reference_model, reference, None)
    result: dict = {"predictions": {shot: len(p) for shot, p in expected.items()}, "flips": {}}
    for name in POLICIES:  # every one: on a CPU with TF32 emulated
        precision = resolve_precision(name, device)
        emulated = POLICIES[name].tf32 and device.type != "cuda"
        head = with_emulated_tf32(model) if emulated else model
        embedding = embed_all(head, videos, precision)
        got = predictions(head, embedding, precision)
        result["flips"][name + (" (emulated)" if emulated else "")] = {
            shot: int((got[shot] != expected[shot]).sum()) for shot in shots
        }
    return result


def test_videos(feature_set, pool: VideoPool, frames: int) -> torch.Tensor:
    """The pool's videos at segment centers, in pool order: (V, T, P, D) float16."""
    features = SplitFeatures(feature_set, pool, frames=frames, device=torch.device("cpu"))
    positions = np.arange(len(pool))
    return features.videos(positions, segment_frames(feature_set.frames, frames, len(positions)))


def flips_of_run(run: Path, *, device: torch.device, **options) -> dict:
    checkpoint = read_checkpoint(run / "checkpoints" / "last")
    model = checkpoint.build()
    if not isinstance(model, SACT):
        raise SystemExit(f"{run} is a {checkpoint.model} run; flips are measured for SA-CT")
    feature_set = open_feature_set(checkpoint.store, checkpoint.feature_set)
    pool = build_pool(feature_set, resolve_split(feature_set, checkpoint.split), "test")
    videos = test_videos(feature_set, pool, model.frames)
    return {"run": str(run), **policy_flips(model, videos, pool, device=device, **options)}


def flips_table(results: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("run", "shot", "predictions", *results[0]["flips"]):
        table.add_column(column, justify="left" if column == "run" else "right")
    for result in results:
        for shot, total in result["predictions"].items():
            table.add_row(
                result["run"],
                str(shot),
                str(total),
                *(
                    f"{flips[shot]} ({100 * flips[shot] / total:.2f}%)"
                    for flips in result["flips"].values()
                ),
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="SA-CT run directories")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=5, help="per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [
        flips_of_run(
            run,
            device=device,
            shots=args.shots,
            episodes=args.episodes,
            queries=args.queries,
            seed=args.seed,
        )
        for run in args.runs
    ]
    for result in results:
        result["run"] = "/".join(Path(result["run"]).parts[-3:])
    Console().print(flips_table(results, f"SA-CT predictions flipped against float64 ({device})"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
