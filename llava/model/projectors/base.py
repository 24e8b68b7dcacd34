"""The projector contract shared by every projector."""

from __future__ import annotations

import abc

import torch
from torch import nn


class Projector(nn.Module, abc.ABC):
    """Maps encoder frames to LLM input embeddings.

    forward: feats [B, T, De], mask [B, T] bool -> embeds [B, Q, Dl], mask [B, Q] bool
    output_lengths: valid frames [B] -> valid outputs [B]; must agree with the forward mask, because
    the collator uses it to decide how many placeholder tokens each audio segment gets.
    """

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
