"""Pretrained weights from the Hugging Face hub, looked up before timm asks for them.

timm downloads a model's weights through huggingface_hub, which retries a hub it cannot reach five
times per file with growing pauses: offline, a hub name would fail only after about a minute. So
before timm runs:

- weights already in the local Hugging Face cache are handed to timm as a file, and a cached model
  loads without touching the network (with or without ``HF_HUB_OFFLINE``);
- otherwise, with ``HF_HUB_OFFLINE`` set, or when one short request finds the hub out of reach,
  the user gets one line at once saying how to pass a local weights file instead.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from timm.models import get_pretrained_cfg

from sact.common.errors import SactError

# A reachable hub answers a HEAD request in well under a second; an unreachable one is refused at
# once or never answers, and this bounds the wait for the latter.
HUB_PROBE_TIMEOUT_S = 5.0
# timm prefers a .safetensors file next to a pickled one (timm.models._hub).
SAFE_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
DEFAULT_FILENAME = "pytorch_model.bin"


class HubError(SactError):
    """Pretrained weights that cannot be had; the message is one line for the user."""


@dataclass(frozen=True)
class HubWeights:
    """Where timm would download a model's pretrained weights from on the Hugging Face hub."""

    model: str
    repo_id: str
    revision: str | None
    filenames: tuple[str, ...]  # in timm's order of preference

    def cached_file(self) -> Path | None:
        """The weights file in the local Hugging Face cache, if it is there."""
        for filename in self.filenames:
            found = huggingface_hub.try_to_load_from_cache(
                self.repo_id, filename, revision=self.revision
            )
            if isinstance(found, str):
                return Path(found)
        return None

    def url(self) -> str:
        return huggingface_hub.hf_hub_url(self.repo_id, self.filenames[0], revision=self.revision)

    def unavailable(self, why: str) -> HubError:
        return HubError(
            f"cannot download the weights of {self.model}: {why}. Download {self.url()} on a "
            "machine with access and pass it with --weights FILE, or copy that machine's Hugging "
            "Face cache (HF_HOME) here and set HF_HUB_OFFLINE=1; --random-init for random weights"
        )

    def check_reachable(self) -> None:
        """Raise at once if the hub cannot be asked for the weights (offline mode, no network)."""
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise self.unavailable("HF_HUB_OFFLINE is set and they are not in the local cache")
        request = urllib.request.Request(self.url(), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # the hub answered (a redirect, 401, 404, ...): timm reports what follows
        except (OSError, ValueError) as error:  # refused, no route, DNS, timeout, bad endpoint
            reason = getattr(error, "reason", error)
            raise self.unavailable(
                f"the Hugging Face hub ({huggingface_hub.constants.ENDPOINT}) is out of reach "
                f"({reason})"
            ) from error


def hub_weights(model: str) -> HubWeights | None:
    """The hub location of ``model``'s default pretrained weights, or None if timm loads them
    some other way (a URL, a custom loader)."""
    config = get_pretrained_cfg(model)
    if config is None or not config.hf_hub_id or config.custom_load:
        return None
    repo_id, _, revision = config.hf_hub_id.partition("@")
    filename = config.hf_hub_filename or DEFAULT_FILENAME
    filenames = [filename]
    if filename.endswith(".bin"):
        safe = SAFE_ALTERNATIVES.get(filename, filename.removesuffix(".bin") + ".safetensors")
        filenames.insert(0, safe)
    return HubWeights(model, repo_id, revision or None, tuple(filenames))
