"""Checkpoints of the trainable weights only (projector, LoRA): safetensors + a JSON config.

A checkpoint directory can have any name and holds:
    config.json          SpeechLlavaConfig: encoder and LLM ids/paths, projector settings, LoRA settings
    model.safetensors    the trainable tensors, keyed by their names in SpeechLlavaForCausalLM
Both files are written atomically (temp file + rename), weights first, so a directory whose
config.json exists holds complete weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llava.fileio import atomic_path, atomic_write_text
from llava.model.configuration import SpeechLlavaConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_trainable(model, out_dir: str | os.PathLike) -> Path:
    """Write `model`'s trainable tensors and its config to `out_dir` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.trainable_state_dict().items()}
    if not state:
        raise ValueError("the model has no trainable parameters: nothing to save")
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_NAME, model.config.to_json_string(use_diff=False))
    return out


def read_config(ckpt_dir: str | os.PathLike) -> SpeechLlavaConfig:
    """Read a checkpoint's config; a clear error naming the file when it is missing or malformed."""
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir}: not a speech-llava checkpoint (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("model_type") != SpeechLlavaConfig.model_type:
        raise ValueError(f"{path}: model_type is {data.get('model_type')!r}, expected 'speech_llava'")
    try:
        return SpeechLlavaConfig(**{k: v for k, v in data.items() if k != "model_type"})
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: invalid checkpoint config: {e}") from None


def read_weights(ckpt_dir: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Load the checkpoint's tensors (optionally only those whose name starts with `prefix`)."""
    path = Path(ckpt_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir}: no {WEIGHTS_NAME}")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_into(
    model,
    weights: dict[str, torch.Tensor],
    source: str,
    expected: Iterable[str] | None = None,
    allow_missing: bool = False,
) -> list[str]:
    """Copy `weights` into `model` and return the names of expected tensors the checkpoint lacked.

    `expected` names the tensors the checkpoint must provide (default: the model's trainable
    parameters, i.e. what `save_trainable` writes). Each of these is an error naming the tensors:
    a name the model does not have, a shape mismatch, a non-finite value, and an expected tensor
    missing from the checkpoint. With `allow_missing`, missing tensors keep their current values
    (e.g. random initialisation) and are returned so the caller can report them.
    """
    own = dict(model.named_parameters())
    unknown = sorted(k for k in weights if k not in own)
    if unknown:
        raise ValueError(f"{source}: tensors not in the model: {_preview(unknown)}")
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(
            f"{source}: shapes do not match this model (was it trained with another encoder or LLM?): "
            + "; ".join(bad[:5])
        )
    nonfinite = sorted(k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if nonfinite:
        raise ValueError(
            f"{source}: non-finite values (NaN or inf) in {len(nonfinite)} tensors: {_preview(nonfinite)}"
        )
    if expected is None:
        expected = [k for k, p in own.items() if p.requires_grad]
    missing = sorted(k for k in expected if k not in weights)
    if missing and not allow_missing:
        raise ValueError(
            f"{source}: the checkpoint lacks {len(missing)} of the {len(set(expected))} tensors this model "
            f"needs from it: {_preview(missing, 10)}"
        )
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v.to(own[k].dtype))
    return missing


def _preview(names: list[str], n: int = 5) -> str:
    return f"{names[:n]}{f' ... ({len(names) - n} more)' if len(names) > n else ''}"
