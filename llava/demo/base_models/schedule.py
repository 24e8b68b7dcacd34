"""The learning-rate schedule of the tiny base models: linear warm-up, a constant phase, cosine decay."""

from __future__ import annotations

import math


def lr_factor(progress: float, warmup_frac: float, decay_frac: float | None = None) -> float:
    """Multiplier of the peak learning rate at `progress` (0..1 of the run).

    Linear warm-up over the first `warmup_frac` (from 1e-3, never 0), then constant, then a cosine
    to 0 over the last `decay_frac` (default: all of the run after the warm-up, i.e. plain warm-up +
    cosine). A run sized by a time budget does not know its length in steps: a long constant phase
    keeps the rate high while, e.g., CTC leaves its all-blank plateau.
    """
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    if decay_frac is None:
        decay_frac = 1.0 - warmup_frac
    decay_start = 1.0 - decay_frac
    if progress < decay_start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - decay_start) / max(decay_frac, 1e-9))))
