"""Projector registry: name -> (module class, settings dataclass)."""

from __future__ import annotations

import dataclasses
from typing import Any

from llava.model.projectors.base import Projector
from llava.model.projectors.qformer import QFormerProjector, QFormerSettings
from llava.model.projectors.stacking import LinearProjector, LinearSettings, MLPProjector, MLPSettings

PROJECTORS: dict[str, tuple[type[Projector], type]] = {
    "qformer": (QFormerProjector, QFormerSettings),
    "mlp": (MLPProjector, MLPSettings),
    "linear": (LinearProjector, LinearSettings),
}


def projector_settings(name: str, options: dict[str, Any] | None = None):
    """Validate `options` against the settings dataclass of projector `name`."""
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector type {name!r}; known: {sorted(PROJECTORS)}")
    settings_cls = PROJECTORS[name][1]
    known = {f.name for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ValueError(f"unknown {name} projector option(s) {unknown}; known: {sorted(known)}")
    return settings_cls(**(options or {}))


def build_projector(
    name: str, options: dict[str, Any] | None, encoder_dim: int, llm_dim: int, frame_rate: float
) -> Projector:
    """Build projector `name` mapping `encoder_dim` frames at `frame_rate` Hz to `llm_dim` embeddings."""
    settings = projector_settings(name, options)
    return PROJECTORS[name][0](settings, encoder_dim, llm_dim, frame_rate)


__all__ = ["PROJECTORS", "Projector", "build_projector", "projector_settings"]
