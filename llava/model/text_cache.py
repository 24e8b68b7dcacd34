"""Text-side cache for the contrastive objectives: pooled transcript states per LLM layer.

With a frozen LLM, the text pass of the `average` contrastive loss is a fixed function of the
transcript's token ids: its masked-mean-pooled hidden state at each compared layer can be computed
once, stored, and read back in every later epoch and in the next stage-1 run with the same LLM.

Semantics (as the audio feature cache): the pooled states of a transcript are *defined* as those of
the LLM run on that transcript alone (a batch of one, no padding), in fp32 (the pooling's output
dtype, so storage adds no rounding). Cold and warm runs see bit-identical values. Against no cache the
only difference is float rounding from batch padding (right padding under causal attention: valid
positions never attend to padding).

Used only where that is exact: a frozen LLM (no LoRA, no trainable weight), the `average` similarity
(Wasserstein compares token sets, not pooled states), no position shift (offsets change the states by
rounding), and the layer set the cache was opened for.

Keys: namespace = hash of the weights that produce the compared states (input embeddings, decoder
layers up to the deepest compared layer, the final norm when the last layer is compared), the LLM
config and the layer set; entry key = hash of (namespace, token ids). Entries, checksums, atomic
writes, corrupt-entry recovery and full-disk handling are the feature cache's (`EntryStore`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llava.model.feature_cache import (
    _INACTIVE_CONFIG,
    _VOLATILE_CONFIG,
    CorruptEntry,
    EntryStore,
    _jsonable,
    weights_digest,
)

logger = logging.getLogger(__name__)

FORMAT = "1"
POOLED_OBJECTIVE = "contrastive_average"  # the only objective whose text side is pooled states


def llm_identity(model, layers: Sequence[int]) -> dict[str, Any]:
    """Everything that determines the pooled text states of `model` at `layers`."""
    layers = sorted(set(int(k) for k in layers))
    lm = model.language_model
    decoder = lm.get_decoder()
    n = model.num_llm_layers
    deepest = max(layers)
    parts = [lm.get_input_embeddings(), *list(decoder.layers)[:deepest]]
    if n in layers:
        parts.append(decoder.norm)
    h = hashlib.sha256()
    for part in parts:  # sha1 per part: fast on multi-GB LLMs, and not a security boundary
        h.update(weights_digest(part, algorithm="sha1").encode())
    config = {
        k: v
        for k, v in lm.config.to_dict().items()
        if k not in _VOLATILE_CONFIG and not any(p in k for p in _INACTIVE_CONFIG)
    }
    return _jsonable(
        {
            "format": FORMAT,
            "kind": "pooled_text_states",
            "weights": h.hexdigest(),
            "compute_dtype": str(lm.get_input_embeddings().weight.dtype),
            "config": config,
            "layers": layers,
        }
    )


class TextStateCache(EntryStore):
    """Pooled text states [len(layers), D] per transcript, for one LLM and one layer set."""

    LABEL = "text state cache"
    IDENTITY_FILE = "llm.json"

    def __init__(self, root: str | os.PathLike, identity: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(root, identity, **kwargs)
        self.layers: list[int] = list(identity["layers"])

    @classmethod
    def for_model(
        cls, root: str | os.PathLike, model, layers: Sequence[int], **kwargs: Any
    ) -> TextStateCache:
        return cls(root, llm_identity(model, layers), **kwargs)

    def serves(self, objective_name: str, layers: Sequence[int], position_offset: int | None) -> bool:
        """Whether this cache gives exactly the text states an objective would compute."""
        return (
            objective_name == POOLED_OBJECTIVE
            and position_offset is None
            and sorted(set(layers)) == self.layers
        )

    def key(self, token_ids: Sequence[int] | np.ndarray) -> str:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(self.namespace.encode())
        h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str, hidden: int) -> torch.Tensor | None:
        """Stored pooled states [len(layers), hidden] fp32, or None."""

        def check(tensor: torch.Tensor, meta: dict[str, str]) -> None:
            want = (len(self.layers), hidden)
            if tensor.dtype != torch.float32 or tuple(tensor.shape) != want:
                raise CorruptEntry(f"entry is {tensor.dtype} {tuple(tensor.shape)}, expected float32 {want}")

        return self._read(key, check)

    def put(self, key: str, pooled: torch.Tensor, num_tokens: int) -> bool:
        return self._write(key, pooled.to("cpu", torch.float32), {"tokens": str(num_tokens)})

    @torch.no_grad()
    def pooled_states(
        self, model, text_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """The text side of the `average` loss from the cache: text_ids [B, Lt], text_mask [B, Lt] ->
        ({layer: [B, 1, D] fp32}, mask [B, 1]). Pooling a single valid position returns it unchanged,
        so the loss sees exactly the stored pooled states."""
        from llava.losses.contrastive import masked_mean_pool

        device = text_ids.device
        hidden = model.llm_hidden_size
        ids_host, mask_host = text_ids.cpu(), text_mask.cpu().bool()
        rows = []
        for ids, valid in zip(ids_host, mask_host):
            tokens = ids[valid]  # [n] the transcript alone
            key = self.key(tokens.numpy())
            pooled = self.get(key, hidden)
            if pooled is None:
                one = tokens[None].to(device)  # [1, n]
                ones = torch.ones_like(one)
                embeds = model.language_model.get_input_embeddings()(one)  # [1, n, D]
                states = model.hidden_states(embeds, ones, self.layers)
                pooled = torch.cat([masked_mean_pool(states[k], ones) for k in self.layers]).cpu()  # [n_l, D]
                self.put(key, pooled, len(tokens))
            rows.append(pooled)
        stacked = torch.stack(rows).to(device)  # [B, n_layers, D]
        text_h = {k: stacked[:, j : j + 1] for j, k in enumerate(self.layers)}  # [B, 1, D] each
        return text_h, torch.ones(len(rows), 1, dtype=torch.long, device=device)


def llm_is_frozen(model) -> bool:
    lm = model.language_model
    return not any(p.requires_grad for p in lm.parameters()) and not hasattr(lm, "peft_config")


def pooled_objective_layers(objective) -> list[int] | None:
    """The layers of the run's `average` contrastive objective (None: the run has none)."""
    for part in getattr(objective, "parts", {}).values():
        if getattr(part, "name", None) == POOLED_OBJECTIVE:
            return list(part.layers)
    return None


def attach_text_cache(
    model, root: str | os.PathLike | None, objective, min_free_gb: float = 1.0
) -> TextStateCache | None:
    """Attach a text state cache in `root` as `model.text_cache` when it applies (frozen LLM, an
    `average` contrastive objective); otherwise log why not. Returns the cache or None."""
    model.text_cache = None
    if root is None or str(root) == "":
        return None
    layers = pooled_objective_layers(objective)
    if layers is None:
        logger.info("--text_state_cache %s: not used, the run has no average contrastive objective", root)
        return None
    if not llm_is_frozen(model):
        logger.info("--text_state_cache %s: not used, the LLM trains (unfrozen or LoRA)", root)
        return None
    cache = TextStateCache.for_model(root, model, layers, min_free_gb=min_free_gb)
    model.text_cache = cache
    entries, size = cache.disk_usage()
    logger.info(
        "text state cache %s (layers %s): %d entries, %.3f GiB on disk",
        cache.dir,
        layers,
        entries,
        size / 2**30,
    )
    return cache
