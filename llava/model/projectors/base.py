"""The projector contract shared by every projector."""

from __future__ import annotations

import abc

import torch
from torch import nn

from llava.model.projectors.output_norm import OutputNorm, mean_row_norm


class Projector(nn.Module, abc.ABC):
    """Maps encoder frames to LLM input embeddings.

    forward: feats [B, T, De], mask [B, T] bool -> embeds [B, Q, Dl], mask [B, Q] bool
    output_lengths: valid frames [B] -> valid outputs [B]; must agree with the forward mask, because
    the collator uses it to decide how many placeholder tokens each audio segment gets.

    Every projector ends in `self.output_norm` (an `OutputNorm`; identity unless its settings ask
    for an output scale matched to the LLM's input embeddings).
    """

    output_norm: OutputNorm

    def match_input_embeddings(self, table: torch.Tensor) -> float | None:
        """Measure the LLM's input-embedding table [V, Dl] and use its mean row norm as the output
        norm target, unless a target is already set. Returns the target in use (None when the
        projector has no output norm), for the caller to record in the checkpoint config."""
        norm = getattr(self, "output_norm", None)  # a projector defined elsewhere may have none
        if norm is None or not norm.active:
            return None
        if not norm.target > 0:
            norm.set_target(mean_row_norm(table))
        return norm.target

    @abc.abstractmethod
    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output positions for `frame_lengths` valid encoder frames ([B] long)."""

    @staticmethod
    def fold(feats: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad T up to a multiple of `size` and fold: [B, T, D] -> [B, T/size, size, D] (+ mask)."""
        b, t, d = feats.shape
        pad = (-t) % size
        if pad:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad), value=False)
        n = (t + pad) // size
        return feats.view(b, n, size, d), mask.view(b, n, size)
