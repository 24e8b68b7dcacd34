"""Fingerprints of what made a set of predictions, so a resumed run never mixes two models or datasets.

A fingerprint is a nested JSON-able dict; `fingerprint_changes` compares two of them and names every
leaf that differs (`model.trainable_weights`, `data.references`, `settings.generation.num_beams`, ...).
What is hashed, and why it is cheap enough to do on every run:

- trainable weights: the checkpoint's `model.safetensors` and `config.json`, byte for byte (a checkpoint
  retrained in place changes); for a model without a checkpoint directory, the projector and LoRA
  tensors in memory.
- base models (encoder, LLM): the name or path they were loaded from, their configs as loaded, and for a
  local directory its files: names and sizes, small files (configs, tokenizer) in full, large files
  (weights) by their first and last MiB, which hold the safetensors header and the last tensors.
- data files: parquet files by size and footer (the footer holds every column chunk's offsets, sizes and
  statistics, so a changed file changes it); audio files by size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "base_model_fingerprint",
    "fingerprint_changes",
    "json_digest",
    "model_fingerprint",
    "parquet_fingerprint",
    "sha256_file",
    "tensors_digest",
]

_CHUNK = 1 << 20
_SMALL_FILE = 4 << 20  # files up to this size are hashed whole
_EDGE = 1 << 20  # larger files: the first and the last MiB


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys)."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over named tensors (sorted by name): names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _edges_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(_EDGE))
        fh.seek(max(0, size - _EDGE))
        h.update(fh.read(_EDGE))
    return h.hexdigest()


def _directory_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:  # caches and locks, not the model
            continue
        size = path.stat().st_size
        digest = sha256_file(path) if size <= _SMALL_FILE else _edges_digest(path, size)
        h.update(f"{rel}|{size}|{digest}\n".encode())
    return h.hexdigest()


def base_model_fingerprint(name_or_path: str | None, config: Any = None) -> dict[str, Any]:
    """A base model (encoder or LLM): where it came from, its config as loaded, its files when local."""
    out: dict[str, Any] = {"name_or_path": name_or_path}
    if config is not None:
        data = config.to_dict() if hasattr(config, "to_dict") else config
        # Settings that only say how the weights were loaded, not what they compute.
        for key in ("_name_or_path", "transformers_version", "_attn_implementation_autoset", "dtype"):
            data.pop(key, None)
        out["config"] = json_digest(data)
    if name_or_path and Path(name_or_path).is_dir():
        out["files"] = _directory_digest(Path(name_or_path))
    return out


def _dtype_of(module: torch.nn.Module | None) -> str | None:
    if module is None:
        return None
    p = next(module.parameters(), None)
    return None if p is None else str(p.dtype)


def model_fingerprint(model: Any, model_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What determines a model's outputs: trainable weights, base models and dtypes (see module docs)."""
    out: dict[str, Any] = {}
    ckpt = Path(model_path) if model_path is not None else None
    if ckpt is not None and (ckpt / "model.safetensors").is_file():
        out["trainable_weights"] = sha256_file(ckpt / "model.safetensors")
        config = ckpt / "config.json"
        out["checkpoint_config"] = sha256_file(config) if config.is_file() else None
    else:
        trainable = [
            (n, p) for n, p in model.named_parameters() if n.startswith("projector.") or "lora_" in n
        ]
        out["trainable_weights"] = tensors_digest(trainable)
    config = getattr(model, "config", None)
    tower = getattr(model, "audio_tower", None)
    lm = getattr(model, "language_model", None)
    out["encoder"] = base_model_fingerprint(
        getattr(config, "audio_encoder_name_or_path", None),
        getattr(getattr(tower, "model", None), "config", None),
    )
    out["encoder"]["layer"] = getattr(tower, "layer", None)
    out["llm"] = base_model_fingerprint(
        getattr(config, "llm_name_or_path", None), getattr(lm, "config", None)
    )
    out["dtypes"] = {
        "encoder": _dtype_of(tower),
        "projector": _dtype_of(getattr(model, "projector", None)),
        "llm": _dtype_of(lm),
    }
    return out


def parquet_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """A parquet file by name, size and footer digest (the footer describes every column chunk)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size >= 12:
            fh.seek(size - 8)
            footer_len = int.from_bytes(fh.read(4), "little")
            start = max(0, size - 8 - footer_len)
            fh.seek(start)
            footer = fh.read(size - start)
        else:
            footer = fh.read()
    return {"name": path.name, "size": size, "footer": hashlib.sha256(footer).hexdigest()}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of every leaf that differs between two fingerprints (added or removed ones too)."""
    a, b = _flatten(old), _flatten(new)
    # Compare through JSON so tuples and lists, ints and equal floats read alike.
    norm = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or norm(a[k]) != norm(b[k]))
