"""Frame-stacking projectors: `linear` (SLAM-ASR style) and `mlp` (LLaVA / SpeechLMM style).

`k` consecutive encoder frames are concatenated (50 Hz -> 10 Hz for k = 5) and mapped to the LLM
width by one Linear (`linear`) or by Linear-GELU-Linear (`mlp`). A stacked position is valid when its
first frame is, so the output length is ceil(valid frames / k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava.model.projectors.base import Projector
from llava.model.projectors.output_norm import OutputNorm, OutputNormSettings


@dataclass
class LinearSettings(OutputNormSettings):
    stack: int = 5  # frames concatenated per output position


@dataclass
class MLPSettings(OutputNormSettings):
    stack: int = 5  # frames concatenated per output position
    hidden_size: int | None = None  # width of the hidden layer; None = the LLM width


def _checked_stack(stack: int) -> int:
    # Checked before the layers are sized by it (a zero-width Linear would be built first otherwise).
    if stack < 1:
        raise ValueError(f"projector stack must be >= 1, got {stack}")
    return stack


class StackingProjector(Projector):
    def __init__(self, stack: int, net: nn.Module, output_norm: OutputNorm | None = None) -> None:
        super().__init__()
        self.stack = _checked_stack(stack)
        self.net = net
        self.output_norm = OutputNorm("none", 1) if output_norm is None else output_norm

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(frame_lengths + self.stack - 1, self.stack, rounding_mode="floor")

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, smask = self.fold(feats, mask, self.stack)  # [B, T/k, k, De]
        b, n, k, d = stacked.shape
        stacked = stacked * smask[..., None]  # padded frames inside a live position contribute zeros
        out = self.output_norm(self.net(stacked.reshape(b, n, k * d).to(self._dtype())))  # [B, T/k, Dl]
        return out, smask[..., 0]

    def _dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype


class LinearProjector(StackingProjector):
    def __init__(self, settings: LinearSettings, encoder_dim: int, llm_dim: int, frame_rate: float) -> None:
        norm = OutputNorm(settings.output_norm, llm_dim, settings.output_norm_target)
        stack = _checked_stack(settings.stack)
        super().__init__(stack, nn.Linear(encoder_dim * stack, llm_dim), norm)


class MLPProjector(StackingProjector):
    def __init__(self, settings: MLPSettings, encoder_dim: int, llm_dim: int, frame_rate: float) -> None:
        hidden = settings.hidden_size or llm_dim
        stack = _checked_stack(settings.stack)
        net = nn.Sequential(nn.Linear(encoder_dim * stack, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))
        super().__init__(stack, net, OutputNorm(settings.output_norm, llm_dim, settings.output_norm_target))
