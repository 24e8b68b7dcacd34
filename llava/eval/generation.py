"""Batched generation from collated inference batches, shared by evaluation and the chat CLI.

Batches come from `SpeechCollator(..., inference=True)`: prompts rendered with the generation prompt,
left padded. Left padding is safe with `generate(inputs_embeds=...)` in transformers 5: position ids
are derived from the attention mask (`cumsum - 1`, pads at 0) for the prefill and continued per row
while decoding, so a padded row sees the same positions as it would alone (and RoPE only depends on
relative positions anyway). Greedy decoding of a batch therefore matches batch size 1 up to float
rounding (tested in tests/eval/test_generation.py).

The argparse pieces at the end (`add_model_arguments`, `add_generation_arguments`, ...) keep the flags
of `llava/eval/eval.py` and the chat CLI (`llava/serve/cli.py`) the same.
"""

from __future__ import annotations

import argparse
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from llava.model.builder import load_pretrained_model

__all__ = [
    "GenerationSettings",
    "NewlineStoppingCriteria",
    "add_generation_arguments",
    "add_model_arguments",
    "decode_generated",
    "generate_batch",
    "load_model_from_args",
    "model_inputs",
    "resolve_dtype",
    "settings_from_args",
    "stop_token_ids",
]

# End-of-turn tokens of common chat templates; generation stops at any of them (and at EOS).
_END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|end_of_text|>")


@dataclass
class GenerationSettings:
    """Decoding options; greedy unless `temperature` > 0."""

    max_new_tokens: int = 200  # upper bound on generated tokens per utterance
    temperature: float = 0.0  # 0 = greedy; > 0 samples with this temperature
    top_k: int | None = None  # sampling only: keep the k most likely tokens
    top_p: float | None = None  # sampling only: nucleus probability mass
    repetition_penalty: float = 1.0  # > 1 discourages repeating generated tokens (also when greedy)
    stop_at_newline: bool = False  # cut the output at its first newline (as in the paper's evaluation)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    for token in _END_OF_TURN:
        if token in vocab:
            add(vocab[token])
    if not ids:
        raise ValueError("no EOS or end-of-turn token found: the tokenizer needs an eos_token")
    return ids


class NewlineStoppingCriteria(StoppingCriteria):
    """Marks a row done once it generated a token whose text contains a newline.

    The set of such tokens is computed once per tokenizer by decoding every id (about a second for a
    128k vocabulary); the generated text is also cut at the newline when decoded.
    """

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (size, ids)

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        size = len(tokenizer)
        cached = self._cache.get(tokenizer)
        if cached is None or cached[0] != size:
            texts = tokenizer.batch_decode([[i] for i in range(size)])
            ids = torch.tensor([i for i, t in enumerate(texts) if "\n" in t], dtype=torch.long)
            cached = self._cache[tokenizer] = (size, ids)
        self.newline_ids = cached[1]  # [K]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        last = input_ids[:, -1]  # [B]
        return torch.isin(last, self.newline_ids.to(last.device))


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


def decode_generated(
    tokenizer: PreTrainedTokenizerBase,
    tokens: torch.Tensor,
    stop_ids: Iterable[int],
    stop_at_newline: bool = False,
) -> list[str]:
    """New tokens [B, T] -> texts: cut at the first stop token, special tokens dropped, stripped."""
    stops = set(int(i) for i in stop_ids)
    texts = []
    for row in tokens.tolist():
        end = next((j for j, t in enumerate(row) if t in stops), len(row))
        text = tokenizer.decode(row[:end], skip_special_tokens=True)
        if stop_at_newline:
            text = text.split("\n", 1)[0]
        texts.append(text.strip())
    return texts


def _audio_dtype(model: Any) -> torch.dtype | None:
    tower = getattr(model, "audio_tower", None)
    if tower is None:
        return None
    try:
        return next(tower.parameters()).dtype
    except StopIteration:
        return None


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, Any],
    settings: GenerationSettings | None = None,
    stop_ids: Sequence[int] | None = None,
) -> list[str]:
    """Generate one text per row of an inference batch (left padded, from `SpeechCollator`)."""
    settings = settings or GenerationSettings()
    if batch["input_ids"].shape[0] == 0:
        return []
    stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "eos_token_id": stop_ids,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if settings.repetition_penalty != 1.0:
        # With inputs_embeds, transformers penalises repeats among the generated tokens only.
        kwargs["repetition_penalty"] = settings.repetition_penalty
    if settings.do_sample:
        kwargs["temperature"] = settings.temperature
        if settings.top_k is not None:
            kwargs["top_k"] = settings.top_k
        if settings.top_p is not None:
            kwargs["top_p"] = settings.top_p
    else:
        # Neutralise sampling defaults a checkpoint's generation config may carry (Llama-3 ships
        # temperature 0.6 / top_p 0.9), which would otherwise trigger warnings in greedy mode.
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if settings.stop_at_newline:
        kwargs["stopping_criteria"] = StoppingCriteriaList([NewlineStoppingCriteria(tokenizer)])
    device = model.device
    with warnings.catch_warnings():
        # Documented above (repetition_penalty); said once per call it would flood an evaluation log.
        warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
        tokens = model.generate(**model_inputs(batch, device, _audio_dtype(model)), **kwargs)  # [B, new]
    return decode_generated(tokenizer, tokens, stop_ids, settings.stop_at_newline)


# ----------------------------------------------------------------------------- command-line pieces
def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """`--dtype` name -> torch dtype (None = the checkpoint's default, float32)."""
    if name == "auto":
        on_gpu = device.startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-path, --audio-encoder, --llm, --device, --dtype (shared with the chat CLI)."""
    parser.add_argument(
        "--model-path", required=True, help="checkpoint directory (trainable weights + config)"
    )
    parser.add_argument(
        "--audio-encoder", default=None, help="override the base encoder recorded in the checkpoint"
    )
    parser.add_argument("--llm", default=None, help="override the base LLM recorded in the checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype; auto = bfloat16 on a GPU that supports it, else float32",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags (greedy unless --temperature > 0), shared with the chat CLI."""
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--stop-at-newline", action="store_true", help="cut each output at its first newline")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """`GenerationSettings` from the flags of `add_generation_arguments` (validated)."""
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_at_newline=args.stop_at_newline,
    )


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, PreTrainedTokenizerBase]:
    """`load_pretrained_model` with the flags of `add_model_arguments`: frozen, in eval mode."""
    return load_pretrained_model(
        args.model_path,
        audio_encoder=args.audio_encoder,
        llm=args.llm,
        device=args.device,
        dtype=resolve_dtype(args.dtype, args.device),
    )
