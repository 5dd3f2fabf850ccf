"""Host-device synchronisations of a training step and of evaluation, counted on the CPU.

A GPU's values live where the host cannot see them: reading one (`.item()`, `bool()`, `.tolist()`,
`.cpu()`) waits for everything queued before it, and so does a blocking copy to the GPU. The meta
device is the same from the host's side (its tensors have shapes but no values), so a step run on
it shows every such point: `HostSyncs` counts them at the dispatcher and hands back zeros so the
code runs on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sact.fewshot.accuracy import episode_accuracies
from sact.fewshot.config import TrainConfig
from sact.fewshot.episodes import EpisodeSampler, build_pool, resolve_split
from sact.fewshot.kinds import create_model
from sact.fewshot.training import Trainer, new_model, prepare_data
from sact.store.backends import open_feature_set

aten = torch.ops.aten
META = torch.device("meta")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class HostSyncs(TorchDispatchMode):
    """Counts reads of meta values and blocking copies onto the meta device, in this thread."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.blocking_copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].is_meta:
            self.reads.append("value read")
            return False if args[0].dtype == torch.bool else 0
        if func is aten._to_copy.default and kwargs.get("device") is not None:
            source, target = args[0].device, torch.device(kwargs["device"])
            if source.type == "meta" and target.type == "cpu":
                self.reads.append("copy to the host")
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            if source.type == "cpu" and target.type == "meta" and not kwargs.get("non_blocking"):
                self.blocking_copies.append("blocking copy to the device")
        if func is aten.copy_.default:
            target, source = args[0], args[1]
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            if source.is_meta and target.device.type == "cpu":
                self.reads.append("copy to the host")
                return target
            if source.device.type == "cpu" and target.is_meta and not non_blocking:
                self.blocking_copies.append("blocking copy to the device")
        return func(*args, **kwargs)


@pytest.mark.parametrize("kind", ["sact", "trx"])
def test_a_training_step_reads_the_device_once(synthetic_store, tmp_path, kind):
    config = TrainConfig(
        feats=synthetic_store.location,
        split=synthetic_store.split,
        model=kind,
        way=3,
        shot=2,
        query=2,
        frames=4,
        d_k=16,
        iterations=3,
        tasks_per_batch=4,
        val_episodes=4,
        out=str(tmp_path / "run"),
        device="meta",
    )
    data = prepare_data(config, None)
    trainer = Trainer(config, data, new_model(config, data.feature_set, 4), tmp_path, 4, None)
    batches = trainer.batches()
    with HostSyncs():  # the first step creates the optimiser's state: not counted
        trainer.train_step(next(batches)[0])
    with HostSyncs() as syncs:
        for tasks, _ in batches:  # loading (indices, labels) and stepping, 4 tasks per step
            trainer.train_step(tasks)
            trainer.step += 1
    assert syncs.blocking_copies == []
    assert syncs.reads == ["copy to the host"] * 2  # loss and accuracy, once per step


@pytest.mark.parametrize("kind", ["sact", "protonet", "trx"])
def test_evaluation_reads_the_device_once_for_all_episodes(synthetic_store, kind):
    feature_set = open_feature_set(synthetic_store.location)
    pool = build_pool(feature_set, resolve_split(feature_set, synthetic_store.split), "val")
    model = create_model(kind, dim=16, frames=8, grid=[2, 2]).to(META)
    embedding = model.embed(torch.empty(len(pool), 8, 4, 16, device=META))
    row_of = np.arange(len(pool))
    one_shot = EpisodeSampler(pool, way=5, shot=1, queries=1).episodes(30, seed=0)
    five_shot = EpisodeSampler(pool, way=5, shot=5, queries=1).episodes(30, seed=0)
    with HostSyncs() as syncs:
        accuracies = episode_accuracies(model, embedding, row_of, one_shot + five_shot)
    assert accuracies.shape == (60,)
    assert syncs.blocking_copies == []
    assert syncs.reads == ["copy to the host"]  # 1/60 per episode
