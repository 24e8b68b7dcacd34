"""Optional `torch.compile` of the LLM passes (`--torch_compile_llm`).

Each decoder layer's `forward` is compiled in place, with dynamic shapes: batches differ in length
from step to step, and every layer runs the same code, so one compiled graph serves all layers and
all lengths. Compiling `forward` rather than the whole module keeps module hooks (used to capture
intermediate hidden states) and activation checkpointing outside the compiled region, so they work
unchanged and attaching a hook never triggers a recompile.

On a GPU this fuses the norms, rotary embeddings and activations around the matrix products. On a
CPU it is for testing only: compilation takes minutes and the step is rarely faster.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def compile_llm(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile every decoder layer of `model.language_model` in place; returns how many.

    `backend` / `mode` are `torch.compile`'s (the Trainer's `--torch_compile_backend` /
    `--torch_compile_mode` when given)."""
    decoder = model.language_model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"--torch_compile_llm: the LLM's decoder ({type(decoder).__name__}) has no `layers` list of "
            "decoder blocks to compile"
        )
    if not torch.cuda.is_available():
        logger.warning("--torch_compile_llm on a CPU: for testing only (slow to compile, rarely faster)")
    for layer in layers:
        if getattr(layer, "_llava_compiled", False):
            continue
        layer.forward = torch.compile(layer.forward, backend=backend, mode=mode, dynamic=True)
        layer._llava_compiled = True
    logger.info("compiled %d LLM decoder layers (backend %s, mode %s)", len(layers), backend, mode)
    return len(layers)
