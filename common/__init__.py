"""Plumbing both stages use: the user-facing error type, atomic files, devices and autocast,
safetensors files, atomic claims on shared work, the ranks of a torchrun job. Nothing here knows
about videos, stores or models."""
