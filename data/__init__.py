"""Files shipped with sact: the benchmark split lists under ``splits/<benchmark>/``, and the
recipes of the published benchmarks under ``recipes/`` (`sact sweep --recipe`, docs/SWEEP.md)."""
