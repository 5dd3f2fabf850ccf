"""Plumbing both stages use: the user-facing error type, atomic files, devices and autocast,
safetensors files. Nothing here knows about videos, stores or models."""
