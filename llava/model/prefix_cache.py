"""The frozen LLM's keys and values for the text every row of a batch starts with, computed once.

In the paper's prompt layout every sequence opens with the same system turn and user header (about
40 tokens before the audio with Llama-3.1's template: a third of a short ASR sample, more with a
Q-Former's few positions per second). A frozen LLM maps that text to the same keys and values at
every step, and no gradient reaches it (it holds no audio and nothing trainable acts on it), so the
step can start from those keys and values and run the LLM on the rest only: the same hidden states
and gradients, up to float rounding, for about a third less LLM work on a stage-1 ASR batch.

The reuse is off whenever it could change the result: any trainable LLM weight (LoRA, an unfrozen
LLM), dropout active in the LLM, a prefix holding padding, audio or a labelled target; and with LLM
weights sharded across ranks (ZeRO-3, FSDP), whose collective gathers a one-rank cache miss would
desynchronise. Cached entries are keyed by the prefix ids, dtype, device and the LLM weights' in-place
version counters, so loading new weights into the same model does not reuse stale entries.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict

import torch
from torch import nn
from transformers import DynamicCache

from llava.constants import IGNORE_INDEX

# Config fields through which a causal LM applies dropout in training mode (Llama, Mistral, Qwen2,
# Gemma: attention_dropout; GPT-2-style: *_pdrop; others: dropout / hidden_dropout).
DROPOUT_FIELDS = (
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def shared_prefix_length(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    audio_token_id: int,
    labels: torch.Tensor | None = None,
) -> int:
    """Length P of the leading run of columns that are equal in every row, attended, and not audio.

    input_ids, attention_mask, labels: [B, L]. With labels, P also stops before the position that
    predicts the first labelled token (labels[:, :P + 1] are all IGNORE_INDEX), so every labelled
    prediction comes from a position the LLM still runs. At most L - 1: one position always runs.
    """
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # [L]
    same &= ~(input_ids == audio_token_id).any(0)
    if labels is not None:
        # Position t predicts labels[:, t + 1]; a cached position predicts nothing.
        unlabelled = (labels == IGNORE_INDEX).all(0)  # [L]
        same[:-1] &= unlabelled[1:]
    run = int(torch.cumprod(same.to(torch.int32), 0).sum())
    return min(run, input_ids.shape[1] - 1)


def llm_dropout_active(language_model: nn.Module) -> bool:
    """Whether the LLM applies dropout as it is now (training mode and a nonzero dropout setting)."""
    if not language_model.training:
        return False
    config = getattr(language_model, "config", None)
    return any(float(getattr(config, name, 0.0) or 0.0) > 0 for name in DROPOUT_FIELDS)


def activation_checkpointing(language_model: nn.Module) -> bool:
    """Whether the LLM's layers recompute in backward (such layers drop a cache passed to them)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # 5.x / 4.x name
        if hasattr(type(language_model), name):
            return bool(getattr(language_model, name))
    return False


def sharded_weights(language_model: nn.Module) -> bool:
    """Whether the LLM's weights are sharded across ranks (DeepSpeed ZeRO-3, FSDP). Their forward
    gathers weights collectively, so a prefix pass that one rank runs and another does not (a cache
    miss on one rank only) would leave the ranks waiting on each other."""
    for p in language_model.parameters():
        if hasattr(p, "ds_id") or type(p).__name__ in ("DTensor", "FlatParameter"):
            return True
    return False


@functools.cache
def _cache_keyword(decoder_class: type) -> str:
    # transformers 5.x names the argument `cache` (`past_key_values` is deprecated); 4.x only has the latter.
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


class PrefixCache:
    """Per-layer keys and values [1, H_kv, P, d] of shared prefixes, for a frozen decoder."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries  # a few prompt layouts per run; oldest dropped first
        self._entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        # Length of the prefix the last cached pass skipped: what the MFU estimate counts as cached
        # (read there instead of recomputing it per batch, which would add a host sync to the step).
        self.last_length = 0

    def _key(self, decoder: nn.Module, prefix_ids: torch.Tensor, dtype: torch.dtype) -> tuple:
        versions = tuple(p._version for p in decoder.parameters())
        return (tuple(prefix_ids.tolist()), dtype, prefix_ids.device, versions)

    def _compute(
        self, decoder: nn.Module, prefix_embeds: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # No gradient, so checkpointed layers would run as they are (the caller excludes them anyway).
        with torch.no_grad():
            out = decoder(inputs_embeds=prefix_embeds, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values  # 5.x / 4.x name
        return [(layer.keys, layer.values) for layer in cache.layers]

    def decoder_kwargs(self, decoder: nn.Module, prefix_embeds: torch.Tensor, prefix_ids: torch.Tensor, batch_size: int) -> dict:  # fmt: skip
        """The cache argument for `decoder(...)` on the rest of a batch of `batch_size` rows.

        prefix_embeds [1, P, D] (the shared rows' input embeddings), prefix_ids [P]. Every call gets a
        fresh cache object: the decoder appends the batch's own keys and values to it.
        """
        key = self._key(decoder, prefix_ids, prefix_embeds.dtype)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            entry = self._compute(decoder, prefix_embeds)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        self.last_length = int(prefix_ids.shape[0])
        data = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in entry]
        return {_cache_keyword(type(decoder)): DynamicCache(data)}
