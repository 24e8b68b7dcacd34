"""Window-level Q-Former projector (the paper's default).

Encoder frames are cut into non-overlapping windows of `round(frame_rate * window_seconds)` frames
(0.333 s -> 17 frames at 50 Hz); each window is read by `num_queries` learnable queries through a
BERT-style Q-Former with cross-attention in every layer, then projected to the LLM width. Windows are
folded into the batch so the Q-Former attends within one window only. Windows that hold no valid
frame (padding) are computed too, reading their own zero frames, and their outputs are zeroed:
padding cannot leak into real outputs, and no shape depends on the data (no host sync in the step;
with duration-bucketed batches padding is a few percent of the windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from llava.model.projectors.base import Projector
from llava.model.projectors.output_norm import OutputNorm, OutputNormSettings


@dataclass
class QFormerSettings(OutputNormSettings):
    num_queries: int = 4  # learnable queries per window (LLM positions per window)
    num_layers: int = 4  # Q-Former layers, each with self- and cross-attention
    hidden_size: int = 768  # Q-Former width
    num_heads: int = 12  # attention heads
    intermediate_size: int = 3072  # feed-forward width
    window_seconds: float = 0.333  # window length; frames per window = round(frame_rate * this)
    dropout: float = 0.1  # hidden and attention dropout inside the Q-Former
    layer_norm_input: bool = True  # LayerNorm on encoder features before cross-attention
    # A learned embedding per frame position inside the window, added to the frames the queries read
    # (off: the paper's Q-Former, whose cross-attention sees content only, so its queries cannot tell
    # the start of a window from its end).
    window_positions: bool = False


class QFormerProjector(Projector):
    def __init__(self, settings: QFormerSettings, encoder_dim: int, llm_dim: int, frame_rate: float) -> None:
        super().__init__()
        self.settings = settings
        self.window = max(1, round(frame_rate * settings.window_seconds))
        self.input_norm = nn.LayerNorm(encoder_dim) if settings.layer_norm_input else nn.Identity()
        self.window_positions = (
            nn.Parameter(torch.randn(self.window, encoder_dim) * 0.02) if settings.window_positions else None
        )  # [w, De]
        qcfg = Blip2QFormerConfig(
            hidden_size=settings.hidden_size,
            num_hidden_layers=settings.num_layers,
            num_attention_heads=settings.num_heads,
            intermediate_size=settings.intermediate_size,
            hidden_dropout_prob=settings.dropout,
            attention_probs_dropout_prob=settings.dropout,
            cross_attention_frequency=1,
            encoder_hidden_size=encoder_dim,
            use_qformer_text_input=False,
        )
        self.qformer = Blip2QFormerModel(qcfg)
        self.queries = nn.Parameter(
            torch.randn(1, settings.num_queries, settings.hidden_size) * qcfg.initializer_range
        )
        self.out_proj = nn.Linear(settings.hidden_size, llm_dim)
        self.output_norm = OutputNorm(settings.output_norm, llm_dim, settings.output_norm_target)

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        windows = torch.div(frame_lengths + self.window - 1, self.window, rounding_mode="floor")
        return windows * self.settings.num_queries

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = feats.shape[0]
        q = self.settings.num_queries
        windows, wmask = self.fold(self.input_norm(feats), mask, self.window)  # [B, W, w, De], [B, W, w]
        n_win, size = windows.shape[1], windows.shape[2]
        if self.window_positions is not None:
            windows = windows + self.window_positions[:size].to(windows.dtype)
        valid = wmask.any(-1)  # [B, W]
        # A padding window attends to its own zero frames (never to an empty key set); dropped below.
        attend = (wmask | ~valid[..., None]).reshape(b * n_win, size)  # [B*W, w]
        query = self.queries.expand(b * n_win, -1, -1).to(self.qformer.dtype)
        out = self.qformer(
            query_embeds=query,
            encoder_hidden_states=windows.reshape(b * n_win, size, -1).to(self.qformer.dtype),
            encoder_attention_mask=attend.long(),
        ).last_hidden_state  # [B*W, Q, H]
        out = self.output_norm(self.out_proj(out.to(self.out_proj.weight.dtype)))  # [B*W, Q, Dl]
        out = out.view(b, n_win, q, -1)
        embeds = torch.where(
            valid[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device)
        )
        out_mask = valid[:, :, None].expand(b, n_win, q)
        return embeds.reshape(b, n_win * q, -1), out_mask.reshape(b, n_win * q)
