"""Device choices that only matter on a GPU, exercised on the CPU with torch.cuda faked."""

from __future__ import annotations

import pytest
import torch

from sact.common.devices import autocast_for, bf16_is_native

CUDA = torch.device("cuda")


def emulating_gpu(*, including_emulation: bool = True) -> bool:
    """is_bf16_supported on a V100 or T4: bfloat16 only through emulation."""
    return including_emulation


def old_torch_says_yes() -> bool:
    """is_bf16_supported of a torch without the including_emulation argument."""
    return True


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_emulated_bf16_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu)
    assert not bf16_is_native(CUDA)
    assert autocast_for(CUDA)[1] == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_for(CUDA)[1] == torch.bfloat16
    assert autocast_for(torch.device("cpu"))[1] is None


@pytest.mark.parametrize(
    ("capability", "native"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_without_the_emulation_argument_the_compute_capability_decides(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], native: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch_says_yes)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert bf16_is_native(CUDA) is native
