"""Layer-wise speech/text alignment of a model, over a dataset (eval `--contrastive`, the demo).

Speech side: the projector outputs alone, run through the LLM; text side: the transcript's token
embeddings alone, run through the LLM; both mean-pooled at each layer and compared with
`llava.eval.diagnostics` (matched vs mismatched cosine, retrieval R@1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llava.constants import AUDIO_TOKEN
from llava.dataset.collator import SpeechCollator
from llava.dataset.sample import Sample
from llava.eval.diagnostics import AlignmentAccumulator, plot_layerwise
from llava.fileio import atomic_write_text
from llava.inference.prompts import NO_LENGTH_LIMIT
from llava.losses.contrastive import masked_mean_pool
from llava.model.layers import resolve_layers


@torch.no_grad()
def alignment_eval(
    model: Any,
    tokenizer: Any,
    samples_or_dataset: Iterable[Any],
    layers: str | int | Sequence[int] | None = "all",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, dict[str, float]]:
    """Layer-wise speech/text alignment of utterances with transcripts (`llava.eval.diagnostics`).

    Speech side: the projector outputs alone run through the LLM; text side: the transcript's token
    embeddings alone (no BOS, prompt or end token) through the LLM. Both are mean-pooled over their
    valid positions at each layer (0 = input embeddings). Samples without a transcript (or None) are
    skipped. Returns `{layer: metrics}`; needs at least 2 usable samples.
    """
    layer_list = resolve_layers("all" if layers is None else layers, model.num_llm_layers)
    collator = SpeechCollator(
        tokenizer, model.num_audio_tokens, with_transcript=True, inference=True, max_length=NO_LENGTH_LIMIT
    )
    acc = AlignmentAccumulator()
    was_training = model.training
    model.eval()
    try:
        chunk: list[Sample] = []
        seen = 0
        bar = tqdm(desc="alignment", unit="utt", disable=not progress)
        for sample in samples_or_dataset:
            if sample is None or not str(sample.get("transcript") or "").strip():
                continue
            chunk.append(_as_sample(sample, seen))
            seen += 1
            if len(chunk) == batch_size:
                _alignment_batch(model, collator, chunk, layer_list, acc)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            _alignment_batch(model, collator, chunk, layer_list, acc)
            bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)
    if len(acc) < 2:
        raise ValueError(f"alignment needs at least 2 utterances with transcripts, got {len(acc)}")
    return acc.compute()


def _as_sample(item: Any, n: int) -> Sample:
    """A Sample for the collator; a plain record needs only `audio` and `transcript` (the prompt and
    target are never looked at: both sides are pooled without them)."""
    if isinstance(item, Sample):
        return item
    transcript = str(item["transcript"]).strip()
    return Sample(
        id=str(item.get("id") or f"item{n}"),
        task=str(item.get("task") or "ASR"),
        audio=np.asarray(item["audio"], dtype=np.float32),
        prompt=AUDIO_TOKEN,
        target=transcript,
        transcript=transcript,
    )


def _alignment_batch(model, collator, samples, layers, acc: AlignmentAccumulator) -> None:
    batch = collator(samples)
    device = model.device
    tower_dtype = next(model.audio_tower.parameters()).dtype
    embeds, audio_mask = model.embed_audio(
        batch["audio_values"].to(device, tower_dtype), batch["audio_lengths"].to(device)
    )  # [B, Q, D], [B, Q]
    speech_mask = audio_mask.long()
    speech_h = model.hidden_states(embeds, speech_mask, layers)
    text_ids = batch["text_input_ids"].to(device)  # [B, Lt]
    text_mask = batch["text_attention_mask"].to(device)  # [B, Lt]
    text_embeds = model.language_model.get_input_embeddings()(text_ids)
    text_h = model.hidden_states(text_embeds, text_mask, layers)
    acc.add(
        {layer: masked_mean_pool(text_h[layer], text_mask) for layer in layers},
        {layer: masked_mean_pool(speech_h[layer], speech_mask) for layer in layers},
    )


def write_alignment(results: dict[int, dict[str, float]], prefix: str | os.PathLike) -> None:
    """`{prefix}_alignment.json` and `{prefix}_alignment.png` (both written atomically)."""
    prefix = Path(prefix)
    payload = {"layers": {str(layer): metrics for layer, metrics in sorted(results.items())}}
    atomic_write_text(prefix.with_name(prefix.name + "_alignment.json"), json.dumps(payload, indent=2) + "\n")
    plot_layerwise(results, prefix.with_name(prefix.name + "_alignment.png"))
