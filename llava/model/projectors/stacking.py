"""Frame-stacking projectors: `linear` (SLAM-ASR style) and `mlp` (LLaVA / SpeechLMM style).

`k` consecutive encoder frames are concatenated (50 Hz -> 10 Hz for k = 5) and mapped to the LLM
width by one Linear (`linear`) or by Linear-GELU-Linear (`mlp`). A stacked position is valid when its
first frame is, so the output length is ceil(valid frames / k).

With `context` c > 0 each output position also sees the c stacked positions on either side (a strided
convolution of width (2c + 1) k, stride k): the rate stays the same, but the projector knows what its
neighbours carry. A CTC encoder marks each letter on about one frame, so a position of k frames alone
cannot tell a letter gap from a letter the neighbouring position already holds.

`dropout` zeroes input features at random while training (feature dropout): a projector of ~100 k
weights otherwise memorises a small ASR set (training loss well below the dev NLL).
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
    context: int = 0  # stacked positions seen on either side of each output position
    dropout: float = 0.0  # dropout on the stacked input features (training only)


@dataclass
class MLPSettings(OutputNormSettings):
    stack: int = 5  # frames concatenated per output position
    context: int = 0  # stacked positions seen on either side of each output position
    dropout: float = 0.0  # dropout on the stacked input features (training only)
    hidden_size: int | None = None  # width of the hidden layer; None = the LLM width


def _checked_dropout(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"projector dropout must be in [0, 1), got {p}")
    return p


def _input_frames(stack: int, context: int = 0) -> int:
    """Frames each output position reads (the first layer's input width), checked before the layers are
    sized by it (a zero-width Linear would be built first otherwise)."""
    if stack < 1:
        raise ValueError(f"projector stack must be >= 1, got {stack}")
    if context < 0:
        raise ValueError(f"projector context must be >= 0, got {context}")
    return stack * (2 * context + 1)


class StackingProjector(Projector):
    def __init__(
        self,
        stack: int,
        net: nn.Module,
        output_norm: OutputNorm | None = None,
        context: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _input_frames(stack, context)
        self.stack, self.context = stack, context
        self.dropout = nn.Dropout(_checked_dropout(dropout))  # no weights: checkpoints are unchanged
        self.net = net
        self.output_norm = OutputNorm("none", 1) if output_norm is None else output_norm

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(frame_lengths + self.stack - 1, self.stack, rounding_mode="floor")

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, smask = self.fold(feats, mask, self.stack)  # [B, T/k, k, De]
        b, n, k, d = stacked.shape
        stacked = stacked * smask[..., None]  # padded frames inside a live position contribute zeros
        flat = stacked.reshape(b, n, k * d)  # [B, N, k*De]
        if self.context:
            c = self.context
            windows = nn.functional.pad(flat, (0, 0, c, c)).unfold(1, 2 * c + 1, 1)  # [B, N, k*De, 2c+1]
            flat = windows.transpose(2, 3).reshape(b, n, (2 * c + 1) * k * d)  # neighbours in time order
        out = self.output_norm(self.net(self.dropout(flat.to(self._dtype()))))  # [B, N, Dl]
        return out, smask[..., 0]

    def _dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype


class LinearProjector(StackingProjector):
    def __init__(self, settings: LinearSettings, encoder_dim: int, llm_dim: int, frame_rate: float) -> None:
        norm = OutputNorm(settings.output_norm, llm_dim, settings.output_norm_target)
        width = _input_frames(settings.stack, settings.context)
        net = nn.Linear(encoder_dim * width, llm_dim)
        super().__init__(settings.stack, net, norm, settings.context, settings.dropout)


class MLPProjector(StackingProjector):
    def __init__(self, settings: MLPSettings, encoder_dim: int, llm_dim: int, frame_rate: float) -> None:
        hidden = settings.hidden_size or llm_dim
        width = _input_frames(settings.stack, settings.context)
        net = nn.Sequential(nn.Linear(encoder_dim * width, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))
        norm = OutputNorm(settings.output_norm, llm_dim, settings.output_norm_target)
        super().__init__(settings.stack, net, norm, settings.context, settings.dropout)
