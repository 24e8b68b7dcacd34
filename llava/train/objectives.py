"""Stage-1 / stage-2 training objectives: which passes run and how their losses combine.

One batch, one encoder pass: the projector outputs are computed once and reused by every term
(the NWP splice and the contrastive speech pass).

    nwp            CE on the target tokens of the chat-templated sequence (ASR pretraining, fine-tuning)
    contrastive    sum over layers l of InfoNCE(pool(text_l), pool(speech_l)) (+ NWP when combined)
    wasserstein    as contrastive, with -Sinkhorn divergence between token sets as the similarity
    mixed          CE on the text tokens of interleaved speech/text sequences
    mixed+contr    layer-0 InfoNCE between pooled pure-text and pooled mixed-sequence embeddings
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX
from llava.losses.contrastive import (
    layerwise_contrastive_loss,
    mixed_embedding_contrastive_loss,
    resolve_layers,
    shifted_position_ids,
)
from llava.train.arguments import DataArguments, LossArguments

OBJECTIVES = ("nwp", "contrastive", "mixed", "mixed_contrastive")


@dataclass
class Objective:
    """What one training run optimises (derived from the loss and data arguments)."""

    kind: str  # one of OBJECTIVES
    nwp: bool  # include the next-word-prediction term
    layers: list[int]  # LLM layers compared by the contrastive term
    mode: str = "average"  # contrastive similarity: average | wasserstein
    temperature: float = 0.1
    symmetric: bool = False
    gather: bool = False
    position_shift: int = 0  # 0 = off; else offsets are drawn from [0, position_shift)
    layer_weights: dict[int, float] | None = None
    nwp_weight: float = 1.0
    contrastive_weight: float = 1.0

    @property
    def needs_transcript(self) -> bool:
        return self.kind in ("contrastive", "mixed_contrastive")


def objective_from_args(loss: LossArguments, data: DataArguments, num_llm_layers: int) -> Objective:
    """Validate the loss flags against each other and the LLM depth; errors before any training."""
    if loss.contrastive_mode not in ("average", "wasserstein"):
        raise ValueError(f"--contrastive_mode {loss.contrastive_mode!r}: expected 'average' or 'wasserstein'")
    layers = resolve_layers(loss.contrastive_layer, num_llm_layers)
    weights = None
    if loss.contrastive_layer_weights:
        weights = {}
        for item in loss.contrastive_layer_weights.split(","):
            try:
                layer, weight = item.split(":")
                weights[int(layer)] = float(weight)
            except ValueError:
                raise ValueError(
                    f"--contrastive_layer_weights: bad item {item!r}; expected 'layer:weight,...'"
                ) from None
        unknown = sorted(set(weights) - set(layers))
        if unknown:
            raise ValueError(
                f"--contrastive_layer_weights names layers {unknown} not in --contrastive_layer {layers}"
            )
    if data.audio_nwp:
        kind = "mixed_contrastive" if loss.contrastive_training else "mixed"
        if kind == "mixed_contrastive" and layers != [0]:
            raise ValueError("contrastive + mixed compares embeddings only: use --contrastive_layer 0")
        if kind == "mixed_contrastive" and loss.contrastive_mode != "average":
            raise ValueError("contrastive + mixed supports --contrastive_mode average only")
    else:
        kind = "contrastive" if loss.contrastive_training else "nwp"
    return Objective(
        kind=kind,
        nwp=kind in ("nwp", "mixed") or (kind == "contrastive" and loss.contr_asr_combine_loss),
        layers=layers,
        mode=loss.contrastive_mode,
        temperature=loss.contrastive_temperature,
        symmetric=loss.contrastive_symmetric,
        gather=loss.contrastive_gather,
        position_shift=loss.max_position_shift if loss.position_shift else 0,
        layer_weights=weights,
        nwp_weight=loss.nwp_loss_weight,
        contrastive_weight=loss.contrastive_loss_weight,
    )


def compute_objective(
    model,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    rng: random.Random,
    temperature: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch and its separate terms (for logging; detached by the caller)."""
    tau = objective.temperature if temperature is None else temperature
    audio_embeds = audio_mask = None
    # A mixed batch whose utterances all became text spans carries audio_values of shape [0, S].
    if batch.get("audio_values") is not None and batch["audio_values"].shape[0] > 0:
        audio_embeds, audio_mask = model.embed_audio(
            batch["audio_values"], batch["audio_lengths"]
        )  # [N, Q, D]
    terms: dict[str, torch.Tensor] = {}
    total = None

    def add(name: str, value: torch.Tensor, weight: float) -> None:
        nonlocal total
        terms[name] = value
        total = weight * value if total is None else total + weight * value

    inputs_embeds = None
    if objective.nwp or objective.kind == "mixed_contrastive":
        inputs_embeds = model.splice(batch["input_ids"], audio_embeds, audio_mask)  # [B, L, D]
    if objective.nwp:
        out = model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            use_cache=False,
        )
        add("nwp", out.loss, objective.nwp_weight)

    if objective.kind == "contrastive":
        _check_contrastive_batch(batch, audio_embeds)
        text_ids, text_mask = batch["text_input_ids"], batch["text_attention_mask"]
        offset = rng.randrange(objective.position_shift) if objective.position_shift else None
        speech_mask = audio_mask.long()  # [B, Q]: one utterance per row
        with torch.no_grad():  # the text side is a fixed target
            text_embeds = model.language_model.get_input_embeddings()(text_ids)  # [B, Lt, D]
            text_h = model.llm_hidden_states(
                text_embeds, text_mask, objective.layers, _positions(text_mask, offset)
            )
        speech_h = model.llm_hidden_states(
            audio_embeds, speech_mask, objective.layers, _positions(speech_mask, offset)
        )
        if objective.mode == "average":
            loss, per_layer = layerwise_contrastive_loss(
                text_h,
                text_mask,
                speech_h,
                speech_mask,
                temperature=tau,
                symmetric=objective.symmetric,
                gather=objective.gather,
                layer_weights=objective.layer_weights,
            )
        else:
            from llava.losses.wasserstein import wasserstein_contrastive_loss

            per_layer = {
                layer: wasserstein_contrastive_loss(
                    text_h[layer],
                    text_mask,
                    speech_h[layer],
                    speech_mask,
                    temperature=tau,
                    symmetric=objective.symmetric,
                )
                for layer in objective.layers
            }
            weights = objective.layer_weights or {}
            loss = sum(weights.get(layer, 1.0) * v for layer, v in per_layer.items())
        for layer, value in per_layer.items():
            terms[f"contrastive_layer_{layer}"] = value.detach()
        add("contrastive", loss, objective.contrastive_weight)

    if objective.kind == "mixed_contrastive":
        if "text_input_ids" not in batch:
            raise ValueError("contrastive + mixed needs the transcript (collator with_transcript=True)")
        with torch.no_grad():
            text_embeds = model.language_model.get_input_embeddings()(batch["text_input_ids"])  # [B, Lt, D]
        loss = mixed_embedding_contrastive_loss(
            text_embeds,
            batch["text_attention_mask"],
            inputs_embeds,
            batch["attention_mask"],
            temperature=tau,
            symmetric=objective.symmetric,
            gather=objective.gather,
        )
        terms["contrastive_layer_0"] = loss.detach()
        add("contrastive", loss, objective.contrastive_weight)

    if total is None:
        raise RuntimeError(f"objective {objective.kind!r} produced no loss term")
    return total, terms


def nwp_term(
    model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Next-token CE on the labelled positions (= `llava.losses.nwp_loss` on the full logits).

    The LM head runs on the labelled positions only: with a 128k vocabulary, full-sequence logits in
    fp32 would dwarf everything else the step keeps in memory.
    """
    hidden = model.language_model.get_decoder()(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, L, D]
    targets = labels[:, 1:]  # position t predicts token t + 1
    picked = targets != IGNORE_INDEX  # [B, L-1]
    if not bool(picked.any()):
        raise ValueError("no labelled token in the batch: check the collator's labels")
    logits = model.language_model.get_output_embeddings()(hidden[:, :-1][picked])  # [N, V]
    return F.cross_entropy(logits.float(), targets[picked])


def _positions(mask: torch.Tensor, offset: int | None) -> torch.Tensor | None:
    return None if offset is None else shifted_position_ids(mask, offset)


def _check_contrastive_batch(batch: dict, audio_embeds: torch.Tensor | None) -> None:
    if audio_embeds is None or "text_input_ids" not in batch:
        raise ValueError("the contrastive loss needs audio and transcripts in every batch")
    b = batch["text_input_ids"].shape[0]
    if audio_embeds.shape[0] != b:
        raise ValueError(
            f"the contrastive loss needs one audio segment per utterance: {audio_embeds.shape[0]} segments for {b} "
            "transcripts"
        )
