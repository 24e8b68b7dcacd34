"""The tiny base models' learning-rate schedule against a direct piecewise formula."""

from __future__ import annotations

import math

import pytest

from llava.demo.base_models.schedule import lr_factor


def _reference(p: float, warmup: float, decay: float) -> float:
    if p < warmup:
        return max(p / warmup, 1e-3)
    start = 1.0 - decay
    if p < start:
        return 1.0
    return (1.0 + math.cos(math.pi * min(1.0, (p - start) / decay))) / 2.0


@pytest.mark.parametrize("p", [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0, 1.2])
def test_warmup_constant_cosine(p):
    assert lr_factor(p, 0.1, 0.4) == pytest.approx(_reference(p, 0.1, 0.4))
    # Default decay: everything after the warm-up (plain warm-up + cosine).
    assert lr_factor(p, 0.1) == pytest.approx(_reference(p, 0.1, 0.9))


def test_shape():
    assert lr_factor(0.0, 0.1) == 1e-3  # never zero at the first step
    assert lr_factor(0.1, 0.1) == 1.0 and lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.55, 0.1, 0.2) == 1.0  # constant phase
