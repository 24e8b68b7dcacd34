"""Batched generation from collated inference batches, the same for every batch composition.

Batches come from `SpeechCollator(..., inference=True)`: prompts rendered with the generation prompt,
left padded, the audio spliced in as `inputs_embeds`. Every decoding option gives token-identical
output whether a prompt is generated alone or in a batch of 16 (tested per option):

- Left padding is safe: transformers derives position ids from the attention mask (pads at 0) for the
  prefill and continues them per row, so a padded row sees the positions it would see alone.
- Repetition penalty: transformers' own `repetition_penalty` with left-padded `inputs_embeds` skips the
  first p generated tokens of a row padded by p (it mistakes the padding for a prompt inside the
  generated ids), so a row's output depended on its neighbours. `GeneratedTokensRepetitionPenalty`
  penalises every generated token of each row instead (the prompt is embeddings and never penalised).
- Sampling: one random stream for the whole batch would make a row's draw depend on the rows before it.
  `RowSeededSampling` draws each row from its own generator, seeded by `GenerationSettings.seed` and the
  row's sample id (Gumbel-max: `argmax(logits / T + Gumbel noise)` is a draw from `softmax(logits / T)`),
  so a sample's output is the same in any batch and after a resume.
- Beam search: with `inputs_embeds` the generated length starts at 0 for every row, so the length
  penalty sees the same lengths in a batch as alone; beams of one row never mix with another row's.
- Stop at newline: tokens whose text contains a newline end a row like EOS (a finished hypothesis in
  beam search), and the text is cut at the newline.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = [
    "END_OF_TURN_TOKENS",
    "GeneratedTokensRepetitionPenalty",
    "GenerationSettings",
    "RowSeededSampling",
    "decode_generated",
    "generate_batch",
    "model_inputs",
    "newline_token_ids",
    "row_seed",
    "stop_token_ids",
]

# End-of-turn tokens of common chat templates; generation stops at any of them (and at EOS).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|end_of_text|>")


@dataclass
class GenerationSettings:
    """Decoding options: greedy by default, sampling when `temperature` > 0, beam search with `num_beams` > 1."""

    max_new_tokens: int = 200  # upper bound on generated tokens per utterance
    temperature: float = 0.0  # 0 = no sampling; > 0 samples with this temperature
    top_k: int | None = None  # sampling only: keep the k most likely tokens
    top_p: float | None = None  # sampling only: nucleus probability mass
    repetition_penalty: float = 1.0  # > 1 discourages repeating generated tokens (any decoding)
    num_beams: int = 1  # > 1: beam search with this many beams (not combined with sampling)
    length_penalty: float = 1.0  # beam search: scores divided by length ** length_penalty
    stop_at_newline: bool = False  # end the output at its first newline (as in the paper's evaluation)
    seed: int = 0  # sampling: with the sample id, seeds each row's own random stream

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens (--max-new-tokens) must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature (--temperature) must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p (--top-p) must lie in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k (--top-k) must be >= 1, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty (--repetition-penalty) must be > 0, got {self.repetition_penalty}"
            )
        if self.num_beams < 1:
            raise ValueError(f"num_beams (--num-beams) must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError(
                "beam search (--num-beams > 1) cannot be combined with sampling (--temperature > 0): "
                "use one or the other"
            )

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------- tokens
def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: Any | None = None) -> list[int]:
    """EOS ids of the model's generation config and the tokenizer, plus known end-of-turn tokens."""
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    lm = getattr(model, "language_model", model)
    gen_config = getattr(lm, "generation_config", None)
    if gen_config is not None:
        add(gen_config.eos_token_id)
    add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            add(vocab[token])
    if not ids:
        raise ValueError("no EOS or end-of-turn token found: the tokenizer needs an eos_token")
    return ids


# tokenizer -> (vocabulary size, ids whose text holds a newline); decoding a 128k vocabulary takes ~1 s.
_NEWLINE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every token whose decoded text contains a newline (computed once per tokenizer)."""
    size = len(tokenizer)
    cached = _NEWLINE_CACHE.get(tokenizer)
    if cached is None or cached[0] != size:
        texts = tokenizer.batch_decode([[i] for i in range(size)])
        cached = _NEWLINE_CACHE[tokenizer] = (size, [i for i, t in enumerate(texts) if "\n" in t])
    return list(cached[1])


def decode_generated(
    tokenizer: PreTrainedTokenizerBase,
    tokens: torch.Tensor,
    stop_ids: Iterable[int],
    newline_ids: Iterable[int] = (),
) -> list[str]:
    """New tokens [B, T] -> texts: cut before the first stop token, or at the first newline inside the
    first newline token (`newline_ids`, when stopping at newlines); special tokens dropped; stripped."""
    stops = set(int(i) for i in stop_ids)
    newlines = set(int(i) for i in newline_ids)
    texts = []
    for row in tokens.tolist():
        end = len(row)
        for j, t in enumerate(row):
            if t in stops:
                end = j
                break
            if t in newlines:
                end = j + 1  # the token may hold text before its newline
                break
        text = tokenizer.decode(row[:end], skip_special_tokens=True)
        if newlines:
            text = text.split("\n", 1)[0]
        texts.append(text.strip())
    return texts


# ----------------------------------------------------------------------------------------- processors
class GeneratedTokensRepetitionPenalty(LogitsProcessor):
    """The CTRL repetition penalty over each row's generated tokens (a row's padding never counts).

    With `inputs_embeds` generation, `input_ids` handed to logits processors hold the generated tokens
    only (`[B, t]`, t = tokens so far), the same for a row alone or in a batch. Scores of tokens already
    generated are divided by `penalty` when positive and multiplied by it when negative.
    """

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, input_ids)  # [B, t]
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


def row_seed(seed: int, sample_id: str) -> int:
    """A 63-bit seed for one row's random stream, from the run's seed and the row's sample id."""
    digest = hashlib.sha256(f"{int(seed)}\x00{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RowSeededSampling(LogitsProcessor):
    """Sampling by Gumbel-max with one generator per row: run last, then pick the argmax (greedy).

    `argmax(s + G)` with G standard Gumbel noise (`-log E`, E ~ Exp(1)) is a draw from `softmax(s)`, so
    after the temperature / top-k / top-p processors this samples exactly as `do_sample=True` would, but
    each row consumes its own stream (seeded by `row_seed`), whatever else is in the batch.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows of scores for {len(self.seeds)} row seeds")
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        noise = torch.empty_like(scores, dtype=torch.float32)  # [B, V]
        for row, gen in enumerate(self._generators):
            noise[row].exponential_(generator=gen)
        return scores.float() - noise.log()


# ----------------------------------------------------------------------------------------- generate
def model_inputs(batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    """The tensors `model.generate` needs, moved to `device` (audio cast to `dtype` when given)."""
    out = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
    }
    if batch.get("audio_values") is not None and batch["audio_values"].shape[0] > 0:
        values = batch["audio_values"].to(device)
        out["audio_values"] = values if dtype is None else values.to(dtype)
        out["audio_lengths"] = batch["audio_lengths"].to(device)
    return out


def _audio_dtype(model: Any) -> torch.dtype | None:
    tower = getattr(model, "audio_tower", None)
    if tower is None:
        return None
    try:
        return next(tower.parameters()).dtype
    except StopIteration:
        return None


def _row_seeds(batch: dict[str, Any], settings: GenerationSettings) -> list[int]:
    ids = batch.get("ids")
    n = batch["input_ids"].shape[0]
    if ids is not None and len(ids) == n and all(i is not None for i in ids):
        return [row_seed(settings.seed, str(i)) for i in ids]
    # No sample ids (an ad hoc batch, the chat CLI): seed from torch's global generator.
    return [int(s) for s in torch.randint(0, 2**62, (n,)).tolist()]


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, Any],
    settings: GenerationSettings | None = None,
    stop_ids: Sequence[int] | None = None,
) -> list[str]:
    """Generate one text per row of an inference batch (left padded, from `SpeechCollator`).

    Rows are independent: a row's text does not depend on the batch it is in (see the module docs).
    Sampling seeds each row from `settings.seed` and `batch["ids"]` (the sample ids) when present.
    """
    settings = settings or GenerationSettings()
    if batch["input_ids"].shape[0] == 0:
        return []
    stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
    newline_ids = newline_token_ids(tokenizer) if settings.stop_at_newline else []
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(GeneratedTokensRepetitionPenalty(settings.repetition_penalty))
    if settings.do_sample:
        processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k is not None:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p is not None:
            processors.append(TopPLogitsWarper(settings.top_p))
        processors.append(RowSeededSampling(_row_seeds(batch, settings)))
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        # Sampling is done by RowSeededSampling; transformers only ever takes the argmax (or beams).
        "do_sample": False,
        "num_beams": settings.num_beams,
        "eos_token_id": stop_ids + [i for i in newline_ids if i not in stop_ids],
        "pad_token_id": tokenizer.pad_token_id,
        "logits_processor": processors,
        # Neutralise options a checkpoint's generation config may carry (Llama-3 ships temperature 0.6,
        # top_p 0.9): they are applied above, row by row, or not at all.
        "temperature": None,
        "top_k": None,
        "top_p": None,
        "repetition_penalty": None,
    }
    if settings.num_beams > 1:
        kwargs.update(length_penalty=settings.length_penalty, num_return_sequences=1)
    tokens = model.generate(**model_inputs(batch, model.device, _audio_dtype(model)), **kwargs)  # [B, new]
    return decode_generated(tokenizer, tokens, stop_ids, newline_ids)
