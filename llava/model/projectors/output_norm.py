"""Output scale of a projector, matched to the LLM's input-embedding statistics (option, off by default).

A randomly initialised projector emits vectors whose norm has nothing to do with the LLM's token
embeddings: the paper's Q-Former ends in a post-LayerNorm (per-element variance ~1) followed by a
default-initialised Linear, so each output element has variance ~1/3 and the output norm is
~sqrt(Dl / 3) (≈ 37 for a 4096-wide LLM), while the token embeddings the LLM was trained on have
norms around 1 (an initializer_range of 0.02 gives 0.02 * sqrt(Dl) ≈ 1.3 at Dl = 4096). Such inputs
sit far outside the LLM's input range, and losses read at deeper layers see hidden states dominated
by them. The options here put the outputs at the scale of the embedding table:

    none       the paper's behaviour: the projector output as is
    rms_match  every output vector rescaled to norm `target` (a fixed, non-learned rescaling); the
               projector still learns the direction
    layernorm  LayerNorm over the LLM width with a learnable gain initialised to target / sqrt(Dl)
               (output norms start at `target` and may then move)

`target` is the mean L2 norm of the rows of the LLM's input-embedding table, measured when the model
is assembled (`Projector.match_input_embeddings`) and recorded in the projector config, so a
checkpoint reloads with the same scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

OUTPUT_NORMS = ("none", "rms_match", "layernorm")


@dataclass
class OutputNormSettings:
    """Fields shared by every projector's settings (see the module docstring)."""

    output_norm: str = "none"  # none (paper) | rms_match | layernorm
    output_norm_target: float = 0.0  # target output norm; 0 = the LLM's mean input-embedding norm


def check_output_norm(kind: str) -> None:
    """Raise a ValueError naming the known kinds when `kind` is not one of them."""
    if kind not in OUTPUT_NORMS:
        raise ValueError(f"unknown projector output_norm {kind!r}; known: {list(OUTPUT_NORMS)}")


def mean_row_norm(table: torch.Tensor) -> float:
    """Mean L2 norm of the rows of an embedding table [V, D], computed in fp32 in chunks (a real
    vocabulary is 128k rows; a single fp32 copy of an 8B model's table would be 2 GB)."""
    if table.dim() != 2 or table.shape[0] == 0:
        raise ValueError(f"expected an embedding table [V, D], got shape {tuple(table.shape)}")
    if table.is_meta:
        raise ValueError(
            "the LLM's input embeddings are on the meta device (not materialised): set the projector "
            "option output_norm_target explicitly"
        )
    total = 0.0
    with torch.no_grad():
        for chunk in table.split(8192):
            total += float(chunk.float().norm(dim=-1).sum())
    return total / table.shape[0]


class OutputNorm(nn.Module):
    """Applied to the projector's last output: x [..., Dl] -> [..., Dl] (see the module docstring)."""

    def __init__(self, kind: str, dim: int, target: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        check_output_norm(kind)
        if target < 0 or not math.isfinite(target):
            raise ValueError(f"projector output_norm_target must be a finite value >= 0, got {target}")
        self.kind = kind
        self.dim = dim
        self.eps = eps
        self.target = float(target)
        # The LayerNorm exists from the start so its parameters have a fixed name in checkpoints.
        self.norm = nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else None
        if target > 0:
            self.set_target(target)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def set_target(self, target: float) -> None:
        """Set the output norm the outputs start at (rms_match: always have)."""
        if not target > 0 or not math.isfinite(target):
            raise ValueError(f"projector output norm target must be a finite value > 0, got {target}")
        self.target = float(target)
        if self.norm is not None:
            # A LayerNorm output with unit gain has norm sqrt(D); this gain makes it `target`.
            with torch.no_grad():
                self.norm.weight.fill_(target / math.sqrt(self.dim))
                self.norm.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if not self.target > 0:
            raise RuntimeError(
                f"projector output_norm={self.kind!r} has no target norm: build the projector through "
                "SpeechLlavaForCausalLM (it measures the LLM's embeddings) or set output_norm_target"
            )
        if self.norm is not None:
            return self.norm(x)
        # rms_match: fp32 norm so a bf16 projector does not lose the scale; zero rows stay zero.
        norm = x.float().norm(dim=-1, keepdim=True).clamp_min(self.eps)
        return (x.float() * (self.target / norm)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, dim={self.dim}, target={self.target:.4g}"
