"""Contrastive embeddings + mixed: pure text vs. the interleaved speech/text sequence, at layer 0."""

from __future__ import annotations

import torch
from torch import nn

from llava.losses.contrastive import mixed_embedding_contrastive_loss
from llava.train.objectives.base import Objective, StepInputs, Temperature


class MixedContrastive(Objective):
    """Layer-0 InfoNCE between the pooled embeddings of the transcript and of the mixed sequence.

    The mixed side is the spliced interleaved sequence ([BOS] + spans + end token) pooled over all
    its positions. The text side, as in the original implementation, is [BOS] + transcript + the
    same end token (`text_special_tokens`, default); without it, the transcript alone.
    """

    name = "mixed_contrastive"
    collator_mode = "mixed"
    needs_transcript = True
    min_pairs = 2

    def __init__(
        self,
        temperature: float = 0.1,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        gather: bool = False,
        text_special_tokens: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.symmetric = symmetric
        self.gather = gather
        self.transcript_special_tokens = text_special_tokens

    def term_weights(self) -> dict[str, float]:
        return {"contrastive_layer_0": 1.0}

    def log_values(self) -> dict[str, float]:
        return self.temperature.log_values()

    def forward(self, model: nn.Module, step: StepInputs) -> dict[str, torch.Tensor]:
        batch = step.batch
        if "text_input_ids" not in batch:
            raise ValueError("contrastive + mixed needs the transcript (collator with_transcript=True)")
        tau = self.temperature()
        embed = model.language_model.get_input_embeddings()
        with torch.no_grad():
            text = embed(batch["text_input_ids"])  # [B, Lt, D]
        if step.batch_size == 0:  # only when gathering: take part in the collective with no rows
            mixed, mixed_mask = text, batch["text_attention_mask"]
        else:
            mixed, mixed_mask = step.spliced, batch["attention_mask"]  # [B, L, D], [B, L]
        loss = mixed_embedding_contrastive_loss(
            text,
            batch["text_attention_mask"],
            mixed,
            mixed_mask,
            temperature=tau,
            symmetric=self.symmetric,
            gather=self.gather,
        )
        return {"contrastive_layer_0": loss}
