"""Layer-wise speech/text contrastive loss (InfoNCE on mean-pooled LLM hidden states).

The trainer runs the LLM passes and hands the hidden states over; everything here is a pure tensor
function. Layer indices follow Hugging Face's `output_hidden_states=True`: a model with N decoder
layers returns N + 1 hidden states, `hidden_states[0]` is the input embeddings (layer 0, no LLM pass
needed) and `hidden_states[N]` ("last") is the output of the final decoder layer *after* the model's
final norm (in Llama the norm is applied before the last hidden state is recorded).

Gradient flow is the caller's job: the paper runs the text side through the frozen LLM under
`torch.no_grad()`, so only the speech side (the projector outputs) receives gradient. The functions
here neither detach nor require anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llava.losses.distributed import gather_with_grad

Temperature = float | torch.Tensor


# ----------------------------------------------------------------------------------------- layers
def all_layers(num_hidden_layers: int) -> list[int]:
    """The layer set "all" for a model with `num_hidden_layers` decoder layers.

    Rule: step = max(1, round_half_up(5 * N / 32)); layers = {k * step for k = 0..5 with
    k * step < N} ∪ {N}, sorted. For N = 32 this is exactly the paper's {0, 5, 10, 15, 20, 25, 32}:
    the input embeddings, five more layers at a stride of 5/32 of the depth, and the last layer.
    Examples: N=2 -> [0, 1, 2]; N=4 -> [0, 1, 2, 3, 4]; N=12 -> [0, 2, 4, 6, 8, 10, 12];
    N=80 -> [0, 13, 26, 39, 52, 65, 80].
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    step = max(1, math.floor(5 * num_hidden_layers / 32 + 0.5))
    layers = {k * step for k in range(6) if k * step < num_hidden_layers}
    layers.add(num_hidden_layers)
    return sorted(layers)


def _check_layer(layer: int, num_hidden_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer index must be an int, got {layer!r}")
    if layer < 0 or layer > num_hidden_layers:
        raise ValueError(
            f"layer {layer} is out of range for a model with {num_hidden_layers} hidden layers "
            f"(valid: 0..{num_hidden_layers}; 0 = input embeddings, {num_hidden_layers} = last)"
        )
    return layer


def _parse_layer_token(token: str, num_hidden_layers: int) -> int:
    token = token.strip().lower()
    if token == "last":
        return num_hidden_layers
    try:
        value = int(token)
    except ValueError:
        raise ValueError(
            f"unknown contrastive layer spec {token!r}: expected an integer, 'last', 'all' "
            "or a comma-separated list such as '0,5,10'"
        ) from None
    return _check_layer(value, num_hidden_layers)


def resolve_layers(spec: str | int | Sequence[int], num_hidden_layers: int) -> list[int]:
    """Turn a layer specification into a sorted list of distinct hidden-state indices.

    `spec` is a single index (0 = input embeddings), "last" (= `num_hidden_layers`, i.e.
    `hidden_states[num_hidden_layers]`, after the final norm), "all" (see `all_layers`), a
    comma-separated string ("0,5,last") or a sequence of ints.

    Raises:
        ValueError: on an index below 0 or above `num_hidden_layers` (naming both), an unknown
            string, or an empty spec.
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return all_layers(num_hidden_layers)
        tokens = [t for t in text.split(",") if t.strip()]
        if not tokens:
            raise ValueError(f"empty contrastive layer spec {spec!r}")
        layers = [_parse_layer_token(t, num_hidden_layers) for t in tokens]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        layers = [_check_layer(spec, num_hidden_layers)]
    elif isinstance(spec, Sequence):
        if len(spec) == 0:
            raise ValueError("empty contrastive layer list")
        layers = [_check_layer(k, num_hidden_layers) for k in spec]
    else:
        raise ValueError(f"unsupported contrastive layer spec {spec!r}")
    return sorted(set(layers))


# ---------------------------------------------------------------------------------------- pooling
def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid positions of each row: hidden [B, T, D], mask [B, T] -> [B, D] fp32.

    Padded positions are excluded with `where`, so their values (even inf/NaN) never matter.

    Raises:
        ValueError: on mismatched shapes or a row without any valid position.
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [B, T, D] and mask [B, T], got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    valid = mask.bool()
    counts = valid.sum(dim=1)  # [B]
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"masked_mean_pool: rows {empty} have no valid (unpadded) position")
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
        unweighted loss, detached (for logging).
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
        per_layer[k] = loss.detach()
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
def position_shift_ids(
    batch_size: int,
    seq_len: int,
    max_shift: int = 400,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """Position ids shifted by one random offset drawn uniformly from [0, max_shift).

    Returns (position_ids [B, L] long = offset + arange(L) on every row, offset). Draw the offset
    once per step and use it for both the text and the speech pass (`shifted_position_ids` builds
    padding-aware ids from a mask and that offset). `max_shift=0` disables the shift (offset 0).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    offset = 0 if max_shift == 0 else int(torch.randint(0, max_shift, (), generator=generator).item())
    ids = torch.arange(seq_len, device=device, dtype=torch.long) + offset
    return ids.unsqueeze(0).expand(batch_size, seq_len).contiguous(), offset


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
