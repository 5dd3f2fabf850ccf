"""In which precision stage 2 computes: the policies of `sact train --precision` and `sact evaluate
--precision`.

SA-CT's `embed` has two paths (docs/MODEL.md, "Precision"): the keys (CPE, W_s, W_q and their
LayerNorms), which only shape the attention weights, and the values (input norm, TMixer, W_v),
whose frame sums `match` subtracts where they nearly cancel. A policy names the precision of each
path and whether float32 matmuls and convolutions may run on TF32 tensor cores:

    policy           keys                values              float32 matmuls, convolutions
    float32          float32             float32             IEEE float32
    tf32             float32             float32             TF32 (CUDA)
    bf16-keys        bfloat16 autocast   float32             IEEE float32
    bf16-keys-tf32   bfloat16 autocast   float32             TF32 (CUDA)
    bf16             bfloat16 autocast   bfloat16 autocast   (autocast sums in float32)
    fp16-keys        float16 autocast    float32             IEEE float32
    auto             float32 on the CPU; on CUDA bf16-keys-tf32 (fp16-keys without native bf16)
    legacy           what sact did before this option: bf16-keys on CUDA with native bfloat16,
                     fp16-keys on older GPUs, float32 on the CPU (runs saved without a policy)

`match` computes in IEEE float32 under every policy: autocast off and, on CUDA, TF32 off
(`exact_float32`), so only the embeddings it is given differ. TF32 is a tensor-core format: the
CPU has none, so a TF32 policy computes IEEE float32 there and says so (`Precision.note`); a run
trained under it on a GPU can still be resumed or evaluated on a CPU. bench/model.py emulates
TF32 on the CPU to count its flips.

auto on CUDA is a choice pending the GPU run of bench/gpu.py: on the CPU (bench/RESULTS.md,
"Precision policies and step modes") TF32's emulated flips against float64 were as few as
bf16-keys', and TF32 moves the values' float32 matmuls (82% of the FLOPs) onto tensor cores.

A `Precision` is a reusable context manager: entered around a forward, it enters the policy's
autocast, sets the TF32 switches (saved and restored on exit: no global state is left behind) and
makes the policy visible to the model (`values_under_autocast`). `Precision.float32_matmuls()`
sets only the TF32 switches, for a backward pass, which must not run under autocast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from sact.common.devices import bf16_is_native
from sact.common.errors import SactError
from sact.fewshot.config import LEGACY_PRECISION, PRECISIONS

AUTO = "auto"


@dataclass(frozen=True)
class Policy:
    """What a named policy computes in: the keys' and the values' dtype, and TF32."""

    keys: torch.dtype
    values: torch.dtype
    tf32: bool
    summary: str


POLICIES: dict[str, Policy] = {
    "float32": Policy(torch.float32, torch.float32, False, "everything IEEE float32"),
    "tf32": Policy(torch.float32, torch.float32, True, "float32 on TF32 tensor cores"),
    "bf16-keys": Policy(
        torch.bfloat16, torch.float32, False, "keys bfloat16 autocast, values float32"
    ),
    "bf16-keys-tf32": Policy(
        torch.bfloat16, torch.float32, True, "keys bfloat16 autocast, values float32 on TF32"
    ),
    "bf16": Policy(torch.bfloat16, torch.bfloat16, False, "keys and values bfloat16 autocast"),
    "fp16-keys": Policy(
        torch.float16, torch.float32, False, "keys float16 autocast, values float32"
    ),
}
CUDA_AUTO = "bf16-keys-tf32"  # pending the GPU run (module docstring)


class PrecisionError(SactError):
    """A policy name that is not one; one line for the user."""


def resolved_name(name: str, device: torch.device) -> str:
    """The policy `name` (auto, legacy or a policy) is on `device`."""
    if name not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    half_keys = "bf16-keys" if device.type != "cuda" or bf16_is_native(device) else "fp16-keys"
    if name == AUTO:
        if device.type != "cuda":
            return "float32"
        return CUDA_AUTO if half_keys == "bf16-keys" else half_keys
    if name == LEGACY_PRECISION:
        return half_keys if device.type == "cuda" else "float32"
    return name


# the policy of the forward being computed now, for `values_under_autocast`
_ACTIVE: ContextVar[Policy | None] = ContextVar("sact_precision", default=None)


@contextmanager
def tf32_switches(device: torch.device, enabled: bool) -> Iterator[None]:
    """On CUDA, for the block: float32 matmuls (cuBLAS) and convolutions (cuDNN) on TF32 tensor
    cores or in IEEE float32; the previous settings come back afterwards. Nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    matmul, convolution = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = convolution


def autocast_off(device: torch.device) -> AbstractContextManager:
    """Autocast switched off on `device`; a device type without autocast (meta) has none to."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:
        return nullcontext()


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """IEEE float32 for the block whatever the policy: autocast off, TF32 off (CUDA)."""
    with autocast_off(device), tf32_switches(device, False):
        yield


def values_context(device: torch.device) -> AbstractContextManager:
    """Where SA-CT computes its values: under the surrounding autocast when the active policy puts
    the values in half precision (bf16), in float32 otherwise, as without any policy."""
    active = _ACTIVE.get()
    if active is not None and active.values != torch.float32:
        return nullcontext()
    return autocast_off(device)


@dataclass
class Precision:
    """A policy resolved for a device; a reusable context manager for forward passes."""

    name: str  # a key of POLICIES, never auto or legacy
    device: torch.device
    _entered: list[ExitStack] = field(default_factory=list, repr=False)

    @property
    def policy(self) -> Policy:
        return POLICIES[self.name]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the forward; None without autocast."""
        return None if self.policy.keys == torch.float32 else self.policy.keys

    def float32_matmuls(self) -> AbstractContextManager:
        """Only the policy's TF32 switches: for a backward pass."""
        return tf32_switches(self.device, self.policy.tf32)

    def __enter__(self) -> Precision:
        stack = ExitStack()
        dtype = self.autocast_dtype
        if dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=dtype))
        stack.enter_context(self.float32_matmuls())
        token = _ACTIVE.set(self.policy)
        stack.callback(_ACTIVE.reset, token)
        self._entered.append(stack)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered.pop().close()

    def describe(self) -> str:
        return f"{self.name} ({self.policy.summary})"

    @property
    def note(self) -> str | None:
        """What a user should know about this policy on this device, if anything."""
        if self.policy.tf32 and self.device.type != "cuda":
            return (
                f"precision {self.name}: {self.device.type} has no TF32 tensor cores; its float32 "
                "matmuls stay IEEE float32"
            )
        return None


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The policy `name` (auto, legacy or a policy) on `device`."""
    return Precision(resolved_name(name, device), device)
