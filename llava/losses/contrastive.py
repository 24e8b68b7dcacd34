"""Layer-wise speech/text contrastive loss (InfoNCE on mean-pooled LLM hidden states).

The objectives run the LLM passes and hand the hidden states over; everything here is a pure tensor
function. Layer indices are those of `llava.model.layers` (0 = input embeddings, N = last).

Gradient flow is the caller's job: the paper runs the text side through the frozen LLM under
`torch.no_grad()`, so only the speech side (the projector outputs) receives gradient. The functions
here neither detach nor require anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from llava.losses.distributed import gather_with_grad

Temperature = float | torch.Tensor


# ---------------------------------------------------------------------------------------- pooling
def check_rows_nonempty(counts: torch.Tensor, what: str) -> None:
    """Fail when a row has no valid position (counts [B]), without a host sync on accelerators.

    On the CPU the check is free and raises a ValueError naming the rows. On an accelerator, reading
    the counts back would stall the step, so the check is queued as a device-side assertion: it still
    stops the run, with a less precise message. Upstream, the collator never yields empty rows.
    """
    if counts.device.type == "cpu":
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{what} rows {empty} have no valid (unpadded) position")
    else:
        torch._assert_async((counts > 0).all(), f"{what}: a row has no valid (unpadded) position")


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions of each row: hidden [B, T, D], mask [B, T] -> [B, D] fp32.

    Padded positions are excluded with `where`, so their values (even inf/NaN) never matter.

    Raises:
        ValueError: on mismatched shapes or (CPU tensors) a row without any valid position; see
            `check_rows_nonempty` for accelerator tensors.
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [B, T, D] and mask [B, T], got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    valid = mask.bool()
    counts = valid.sum(dim=1)  # [B]
    check_rows_nonempty(counts, "masked_mean_pool")
    summed = torch.where(valid.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)  # [B, D] fp32
    return summed / counts.unsqueeze(-1).to(summed.dtype)


# ---------------------------------------------------------------------------------------- InfoNCE
def _check_temperature(temperature: Temperature) -> None:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _info_nce_global(text: torch.Tensor, speech: torch.Tensor, temperature: Temperature, symmetric: bool):
    # text, speech: [B, D] already gathered; the matching pair of row i is column i.
    if text.shape[0] < 2:
        raise ValueError(
            f"a contrastive batch needs at least 2 pairs (it has {text.shape[0]}): "
            "with one pair there are no negatives"
        )
    text = F.normalize(text.float(), dim=-1)
    speech = F.normalize(speech.float(), dim=-1)
    logits = text @ speech.T / temperature  # [B, B], rows = text
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    return loss


def info_nce(
    text: torch.Tensor,
    speech: torch.Tensor,
    temperature: Temperature = 0.1,
    symmetric: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """InfoNCE between paired vectors text [B, D] and speech [B, D] (row i matches row i).

    Both sides are L2-normalised, S = text · speechᵀ / τ (rows = text) and the loss is
    CE(S, arange(B)), averaged over rows; `symmetric` averages it with the speech->text direction
    CE(Sᵀ, arange(B)). Computed in fp32.

    With `gather=True` and torch.distributed initialised, both sides are gathered from all ranks
    and every rank computes the loss over the global batch: the pair of a local row r sits at global
    row offset + r (rank * B with equal local batches). See `llava.losses.distributed` for the
    gradient scale. Without a process group, `gather` changes nothing.

    Raises:
        ValueError: on mismatched shapes or a (global) batch of fewer than 2 pairs.
    """
    if text.dim() != 2 or text.shape != speech.shape:
        raise ValueError(
            f"expected text and speech of the same shape [B, D], got {tuple(text.shape)} and "
            f"{tuple(speech.shape)}"
        )
    _check_temperature(temperature)
    if gather:
        text, _ = gather_with_grad(text)
        speech, _ = gather_with_grad(speech)
    return _info_nce_global(text, speech, temperature, symmetric)


class LearnableTemperature(nn.Module):
    """A trainable InfoNCE temperature, stored as log τ and clamped to [min, max] when read.

    Off by default (the paper uses a fixed τ = 0.1); pass `module()` as `temperature`. The clamp
    bounds the logits scale (1/τ ≤ 100 with the default minimum), as CLIP does.
    """

    def __init__(self, init: float = 0.1, min_temperature: float = 0.01, max_temperature: float = 1.0):
        super().__init__()
        if not 0 < min_temperature <= init <= max_temperature:
            raise ValueError(
                f"need 0 < min_temperature <= init <= max_temperature, got "
                f"{min_temperature}, {init}, {max_temperature}"
            )
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.min_temperature, self.max_temperature)


# -------------------------------------------------------------------------------------- layerwise
def layerwise_contrastive_loss(
    text_hidden: Mapping[int, torch.Tensor],
    text_mask: torch.Tensor,
    speech_hidden: Mapping[int, torch.Tensor],
    speech_mask: torch.Tensor,
    temperature: Temperature = 0.1,
    symmetric: bool = False,
    gather: bool = False,
    layer_weights: Mapping[int, float] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The paper's `average` contrastive loss: Σ_l w_l · InfoNCE(pool(text_l), pool(speech_l)).

    Args:
        text_hidden: layer -> [B, Lt, D] hidden states of the transcript tokens alone.
        text_mask: [B, Lt], nonzero on real tokens.
        speech_hidden: layer -> [B, Ls, D] hidden states of the projector outputs alone; the same
            layer keys as `text_hidden`.
        speech_mask: [B, Ls], nonzero on real positions.
        temperature: τ, a float or a scalar tensor (e.g. `LearnableTemperature()()`).
        symmetric: also score speech -> text and average both directions.
        gather: take negatives from all data-parallel ranks (one gather for all layers).
        layer_weights: layer -> weight; missing layers weigh 1.

    Returns:
        (total, per_layer) where total is the weighted sum and per_layer maps each layer to its
        unweighted loss (with its gradient, so a caller can weigh or inspect each term itself).
    """
    layers = sorted(text_hidden)
    if not layers:
        raise ValueError("layerwise_contrastive_loss: no layers given")
    if set(speech_hidden) != set(layers):
        raise ValueError(
            f"text and speech hidden states cover different layers: {layers} vs {sorted(speech_hidden)}"
        )
    weights = dict(layer_weights or {})
    unknown = sorted(set(weights) - set(layers))
    if unknown:
        raise ValueError(f"layer_weights name layers {unknown} that are not among the layers {layers}")
    _check_temperature(temperature)

    text = torch.stack([masked_mean_pool(text_hidden[k], text_mask) for k in layers], dim=1)  # [B, n, D]
    speech = torch.stack([masked_mean_pool(speech_hidden[k], speech_mask) for k in layers], dim=1)
    if text.shape != speech.shape:
        raise ValueError(
            f"text and speech batches differ: pooled {tuple(text.shape)} vs {tuple(speech.shape)} [B, layers, D]"
        )
    if gather:
        text, _ = gather_with_grad(text)
        speech, _ = gather_with_grad(speech)

    total = text.new_zeros(())
    per_layer: dict[int, torch.Tensor] = {}
    for i, k in enumerate(layers):
        loss = _info_nce_global(text[:, i], speech[:, i], temperature, symmetric)
        per_layer[k] = loss
        total = total + weights.get(k, 1.0) * loss
    return total, per_layer


def mixed_embedding_contrastive_loss(
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    mixed_embeds: torch.Tensor,
    mixed_mask: torch.Tensor,
    temperature: Temperature = 0.1,
    symmetric: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """ "Contrastive embeddings + mixed": layer-0 InfoNCE, pure text vs. mixed speech-text sequence.

    text_embeds [B, Lt, D] are the input embeddings of the transcript, mixed_embeds [B, Lm, D] the
    input embeddings of the interleaved sequence of the same utterance (text spans embedded, speech
    spans from the projector). Both are mean-pooled over their masks; rows = text. This is
    `info_nce(masked_mean_pool(...), masked_mean_pool(...))`, i.e. the layer-0 term of
    `layerwise_contrastive_loss`.
    """
    return info_nce(
        masked_mean_pool(text_embeds, text_mask),
        masked_mean_pool(mixed_embeds, mixed_mask),
        temperature=temperature,
        symmetric=symmetric,
        gather=gather,
    )


# ------------------------------------------------------------------------------- position shift
def shifted_position_ids(mask: torch.Tensor, offset: int) -> torch.Tensor:
    """Position ids that count real tokens only, starting at `offset`: mask [B, L] -> [B, L] long.

    The first real token of each row gets `offset`, the next `offset + 1`, and so on, whether the
    padding is on the right or the left; padded positions get `offset` (they are masked anyway).
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, L], got shape {tuple(mask.shape)}")
    valid = mask.bool()
    positions = valid.long().cumsum(dim=1) - 1  # [B, L]
    return positions.clamp(min=0).masked_fill(~valid, 0) + offset
