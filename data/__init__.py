"""Files shipped with sact: the benchmark split lists under ``splits/<benchmark>/``."""
