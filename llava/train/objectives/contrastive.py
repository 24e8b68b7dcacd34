"""Speech/text contrastive objectives on mean-pooled LLM hidden states, one term per layer.

Text side: the transcript's token embeddings run through the frozen LLM without gradient (a fixed
target). Speech side: the projector outputs alone run through the LLM with gradient to the
projector. Layer 0 (the input embeddings) needs no LLM pass, and the LLM stops after the deepest
layer compared.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from llava.losses.contrastive import layerwise_contrastive_loss, shifted_position_ids
from llava.train.objectives.base import Objective, StepInputs, Temperature


class ContrastiveObjective(Objective):
    """InfoNCE between pooled text and speech states at `layers`; subclasses set the similarity.

    Owns its temperature: a fixed τ, or with `learnable_temperature` a `LearnableTemperature`
    parameter that the optimiser trains and the trainer saves with the run's state (never with the
    model, whose checkpoint stays loadable for inference).
    """

    needs_transcript = True
    min_pairs = 2  # one pair has no negatives

    def __init__(
        self,
        layers: Sequence[int],
        temperature: float = 0.1,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        gather: bool = False,
        layer_weights: Mapping[int, float] | None = None,
        max_position_shift: int = 0,
    ) -> None:
        """
        Args:
            layers: hidden-state indices compared (0 = input embeddings, N = last).
            temperature: τ, or the initial τ when learnable.
            learnable_temperature: train τ (stored as log τ, clamped to [0.01, 1]).
            symmetric: also score speech -> text and average both directions.
            gather: take negatives from every data-parallel rank.
            layer_weights: layer -> weight of its term (missing layers weigh 1).
            max_position_shift: 0 = off; else each step draws one offset from [0, max) and adds it
                to the position ids of both passes.
        """
        super().__init__()
        if not layers:
            raise ValueError("a contrastive objective needs at least one layer")
        if max_position_shift < 0:
            raise ValueError(f"max_position_shift must be >= 0, got {max_position_shift}")
        weights = dict(layer_weights or {})
        unknown = sorted(set(weights) - set(layers))
        if unknown:
            raise ValueError(f"layer weights name layers {unknown} that are not compared ({sorted(layers)})")
        self.layers = sorted(set(layers))
        self.layer_weights = {k: weights.get(k, 1.0) for k in self.layers}
        self.temperature = Temperature(temperature, learnable_temperature)
        self.symmetric = symmetric
        self.gather = gather
        self.max_position_shift = max_position_shift

    def term_weights(self) -> dict[str, float]:
        return {f"contrastive_layer_{k}": w for k, w in self.layer_weights.items()}

    def log_values(self) -> dict[str, float]:
        return self.temperature.log_values()

    def forward(self, model: nn.Module, step: StepInputs) -> dict[str, torch.Tensor]:
        batch = step.batch
        if "text_input_ids" not in batch:
            raise ValueError(
                "the contrastive loss needs transcripts in every batch (collator with_transcript=True)"
            )
        if step.batch_size == 0:  # only when gathering: take part in the collective with no rows
            empty = torch.zeros(0, 1, model.llm_hidden_size, device=batch["input_ids"].device)
            none = torch.zeros(0, 1, dtype=torch.long, device=empty.device)
            per_layer = self.similarity(
                {k: empty for k in self.layers}, none, {k: empty for k in self.layers}, none
            )
            return {f"contrastive_layer_{k}": v for k, v in per_layer.items()}
        if step.audio is None:
            raise ValueError("the contrastive loss needs audio in every batch")
        speech, speech_valid = step.audio  # [B, Q, D], [B, Q]: one segment per utterance
        if speech.shape[0] != step.batch_size:
            raise ValueError(
                f"the contrastive loss needs one audio segment per utterance: {speech.shape[0]} segments for "
                f"{step.batch_size} transcripts"
            )
        text_ids, text_mask = batch["text_input_ids"], batch["text_attention_mask"]  # [B, Lt]
        speech_mask = speech_valid.long()  # [B, Q]
        # The stdlib RNG: the Trainer saves and restores its state with every checkpoint.
        offset = random.randrange(self.max_position_shift) if self.max_position_shift else None
        text_cache = getattr(model, "text_cache", None)  # pooled text states (llava.model.text_cache)
        if text_cache is not None and text_cache.serves(self.name, self.layers, offset):
            text_h, text_mask = text_cache.pooled_states(model, text_ids, text_mask)  # [B, 1, D], [B, 1]
        else:
            with torch.no_grad():  # the text side is a fixed target
                text_embeds = model.language_model.get_input_embeddings()(text_ids)  # [B, Lt, D]
                text_h = model.hidden_states(
                    text_embeds, text_mask, self.layers, _positions(text_mask, offset)
                )
        speech_h = model.hidden_states(speech, speech_mask, self.layers, _positions(speech_mask, offset))
        per_layer = self.similarity(text_h, text_mask, speech_h, speech_mask)
        return {f"contrastive_layer_{k}": v for k, v in per_layer.items()}

    def similarity(
        self,
        text_h: Mapping[int, torch.Tensor],
        text_mask: torch.Tensor,
        speech_h: Mapping[int, torch.Tensor],
        speech_mask: torch.Tensor,
    ) -> dict[int, torch.Tensor]:
        """layer -> unweighted loss, from hidden states {layer: [B, L, D]} and masks [B, L]."""
        raise NotImplementedError


class AverageContrastive(ContrastiveObjective):
    """The paper's `average` loss: cosine InfoNCE between mean-pooled states, per layer."""

    name = "contrastive_average"

    def similarity(self, text_h, text_mask, speech_h, speech_mask) -> dict[int, torch.Tensor]:
        _, per_layer = layerwise_contrastive_loss(
            text_h,
            text_mask,
            speech_h,
            speech_mask,
            temperature=self.temperature(),
            symmetric=self.symmetric,
            gather=self.gather,
        )
        return per_layer


class WassersteinContrastive(ContrastiveObjective):
    """InfoNCE with -Sinkhorn divergence between the token sets as the similarity, per layer."""

    name = "contrastive_wasserstein"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.gather:
            raise ValueError("--contrastive_gather is not supported with --contrastive_mode wasserstein")

    def similarity(self, text_h, text_mask, speech_h, speech_mask) -> dict[int, torch.Tensor]:
        from llava.losses.wasserstein import wasserstein_contrastive_loss  # optional geomloss

        tau = self.temperature()
        return {
            k: wasserstein_contrastive_loss(
                text_h[k], text_mask, speech_h[k], speech_mask, temperature=tau, symmetric=self.symmetric
            )
            for k in self.layers
        }


def _positions(mask: torch.Tensor, offset: int | None) -> torch.Tensor | None:
    return None if offset is None else shifted_position_ids(mask, offset)
