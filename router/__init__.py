"""Pre-ranking service: DAMR over hot-swapped model versions."""
