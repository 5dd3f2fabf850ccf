"""Stage 1 of sact: find videos, decode and sample frames, run a frozen timm backbone, and write
patch features into a zarr feature store.

Kept import-light on purpose: stage 2 imports `extract.store` and `extract.splits` without paying
for the decoder or the backbone.
"""
