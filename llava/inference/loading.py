"""Loading a checkpoint for inference: frozen, in eval mode, on the requested device and dtype.

Everything that can be checked without the model is checked first by the callers (configs, prompt
options, the output directory); `load_pretrained_model` then validates the checkpoint itself (its
config, the encoder layer, missing or non-finite tensors) before any generation starts.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llava.model.builder import DTYPES as MODEL_DTYPES
from llava.model.builder import load_pretrained_model

__all__ = ["DTYPES", "load_model", "resolve_dtype"]

# `--dtype` names; "auto" = bfloat16 on a GPU that supports it, else float32.
DTYPES = ("auto", *MODEL_DTYPES)


def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """`--dtype` name -> torch dtype (None = the checkpoint's default, float32)."""
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {list(DTYPES)}")
    if name == "auto":
        on_gpu = str(device).startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else None
    return None if name == "float32" else MODEL_DTYPES[name]


def load_model(
    model_path: str | os.PathLike,
    *,
    audio_encoder: str | None = None,
    llm: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    audio_feature_cache: str | os.PathLike | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A checkpoint reassembled for inference (`llava.model.builder.load_pretrained_model`).

    `audio_encoder` / `llm` override the base models the checkpoint records; `dtype` is a `--dtype`
    name; `audio_feature_cache` attaches the frozen-encoder feature cache in that directory.
    """
    model, tokenizer = load_pretrained_model(
        model_path,
        audio_encoder=audio_encoder,
        llm=llm,
        device=device,
        dtype=resolve_dtype(dtype, device),
        attn_implementation=attn_implementation,
    )
    if audio_feature_cache:
        from llava.model.feature_cache import attach_feature_cache

        attach_feature_cache(model.audio_tower, audio_feature_cache)
    return model, tokenizer
