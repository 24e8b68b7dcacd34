"""Frozen-encoder feature cache: the encoder's output per audio segment, computed once, kept on disk.

A frozen encoder is a fixed function of the audio, so stage 1, stage 2 and evaluation can share its
outputs. Attach a cache to an `AudioEncoder` (`attach_feature_cache`, or `--audio_feature_cache DIR` on
training and evaluation) and its forward pass looks every segment up before encoding it.

Semantics (exact by construction):
    With a cache attached, the features of a segment are *defined* as the frozen encoder's output for
    that segment alone (a batch of one, no padding), rounded to the storage dtype and cast back to the
    encoder's dtype. A hit returns the stored tensor; a miss computes exactly that value and stores it.
    A run with a cold cache and a run with a warm cache therefore see bit-identical features and
    losses, whatever the batch composition. Against a run *without* a cache (padded batches in the
    encoder's dtype) the only differences are
      - the storage rounding: none with `storage_dtype="float32"`, or with bf16 storage of an encoder
        that already computes in bf16 (the GPU default); relative <= 2**-8 for bf16 storage of an fp32
        encoder;
      - padding: for attention-masked encoders (HuBERT-large, WavLM, wav2vec2-large-lv60) only float
        rounding (~1e-6); a group-norm feature encoder without an attention mask (hubert-base style)
        normalises over the padded zeros of a batch, and the cache's padding-free value is the one the
        encoder produces for the utterance as it was trained.

Keys:
    namespace = hash of the encoder's identity: a digest of its weights (values and dtypes), its
        config (minus settings inactive in eval mode: dropout, layer drop, SpecAugment), the output
        layer, the feature-extractor settings and the storage dtype. A directory filled with another
        encoder, layer or dtype lives in another namespace and is never read.
    entry key = hash of (namespace, number of samples, the float32 samples). Content addressed: the
        same audio under another id is the same entry; the id is recorded in the entry when known.

Layout:
    DIR/<namespace>/encoder.json                    the identity, human-readable
    DIR/<namespace>/<key[:2]>/<key>.safetensors     one entry: "features" [T, De] in the storage dtype,
                                                    metadata: namespace, key, samples, checksum, id

Entries are written atomically (temp file + rename). Each carries a checksum of its tensor bytes; an
entry that is truncated, corrupt, of the wrong shape or from another namespace is reported, deleted and
recomputed, never used. A failed write (disk full, quota, permissions) or a disk below `min_free_gb` is
reported once and the run continues without writing; reads go on.

Fill a cache ahead of training with several processes (the dataset reading code of training):

    python -m llava.model.feature_cache --data_config CFG --audio_encoder ENC --out DIR --workers N
    python -m llava.model.feature_cache --report DIR           # namespaces, entries, size on disk
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.torch
import torch

from llava.fileio import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from llava.model.encoders import AudioEncoder

logger = logging.getLogger(__name__)

FORMAT = "1"  # entry format; a change makes old entries another namespace
STORAGE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_TENSOR = "features"
# Config keys that do not change a frozen encoder's output in eval mode: excluded from the identity so
# e.g. a training run with layerdrop=0 (needed for DDP) shares the cache with evaluation.
_INACTIVE_CONFIG = ("dropout", "layerdrop", "mask_", "apply_spec_augment", "ctc_", "_name_or_path")
_VOLATILE_CONFIG = {
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "_commit_hash",
    "name_or_path",
    "use_cache",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
}


# --------------------------------------------------------------------------------------------- identity
def weights_digest(module: torch.nn.Module, algorithm: str = "sha256") -> str:
    """Digest over every parameter and buffer of `module`: names, dtypes, shapes and bytes."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def encoder_identity(encoder: AudioEncoder, storage_dtype: str = "bfloat16") -> dict[str, Any]:
    """Everything that determines the cached features of `encoder` (a JSON-able dict)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"--audio_feature_cache_dtype {storage_dtype!r}: expected one of {sorted(STORAGE_DTYPES)}"
        )
    config = {
        k: v
        for k, v in encoder.model.config.to_dict().items()
        if k not in _VOLATILE_CONFIG and not any(p in k for p in _INACTIVE_CONFIG)
    }
    fe = {k: v for k, v in encoder.feature_extractor.to_dict().items() if k not in ("processor_class",)}
    fe.pop("mel_filters", None)  # derived from the other Whisper settings, and large
    return _jsonable(
        {
            "format": FORMAT,
            "weights_sha256": weights_digest(encoder.model),
            "compute_dtype": str(next(encoder.model.parameters()).dtype),
            "layer": encoder.layer,
            "config": config,
            "feature_extractor": fe,
            "storage_dtype": storage_dtype,
        }
    )


def namespace_of(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


# --------------------------------------------------------------------------------------------- entries
class CorruptEntry(ValueError):
    """A cache entry that must not be used (truncated, corrupt, mismatched)."""


def _checksum(data: bytes | memoryview) -> str:
    # A content check against truncation and bit rot, not a security boundary.
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def encode_entry(features: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """Serialise one entry: safetensors bytes whose metadata carries a checksum of the tensor data."""
    features = features.contiguous()
    raw = features.reshape(-1).view(torch.uint8).numpy().tobytes()
    meta = {**metadata, "format": FORMAT, "checksum": _checksum(raw)}
    return safetensors.torch.save({_TENSOR: features}, metadata=meta)


def decode_entry(data: bytes) -> tuple[torch.Tensor, dict[str, str]]:
    """Parse and verify one entry; `CorruptEntry` when anything is off."""
    if len(data) < 8:
        raise CorruptEntry(f"{len(data)} bytes: truncated")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CorruptEntry("header runs past the end of the file: truncated")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = header["__metadata__"]
        info = header[_TENSOR]
        begin, end = info["data_offsets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"unreadable header ({exc})") from None
    payload = memoryview(data)[8 + n :]
    if end != len(payload) or begin != 0:
        raise CorruptEntry(f"data holds {len(payload)} bytes, header says {end}: truncated")
    if meta.get("format") != FORMAT:
        raise CorruptEntry(f"entry format {meta.get('format')!r}, expected {FORMAT}")
    if _checksum(payload) != meta.get("checksum"):
        raise CorruptEntry("checksum mismatch")
    try:
        tensor = safetensors.torch.load(data)[_TENSOR]
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptEntry(f"unreadable tensor ({exc})") from None
    return tensor, meta


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # entries found unusable, deleted and recomputed
    written: int = 0
    bytes_written: int = 0
    write_errors: int = 0


# --------------------------------------------------------------------------------------------- the cache
class EntryStore:
    """One namespace of a cache directory: checksummed entries written atomically, verified on read.

    A failed write (disk full, quota, permissions) disables writing with one warning; reads go on.
    An unusable entry is counted, deleted and reported as a miss (the caller recomputes it)."""

    LABEL = "cache"
    IDENTITY_FILE = "identity.json"

    def __init__(
        self,
        root: str | os.PathLike,
        identity: dict[str, Any],
        *,
        writable: bool = True,
        min_free_gb: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.identity = identity
        self.namespace = namespace_of(identity)
        self.dir = self.root / self.namespace
        self.min_free_bytes = int(min_free_gb * 2**30)
        self.stats = CacheStats()
        self.write_disabled: str | None = None if writable else "opened read-only"
        self._warned_corrupt = 0
        if writable:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                described = self.dir / self.IDENTITY_FILE
                if not described.exists():
                    atomic_write_text(described, json.dumps(identity, indent=1, sort_keys=True) + "\n")
            except OSError as exc:
                self._disable_writes(exc)

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read(self, key: str, check: Callable[[torch.Tensor, dict[str, str]], None]) -> torch.Tensor | None:
        """The verified tensor of `key`, or None; `check` raises `CorruptEntry` on a mismatch."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except OSError as exc:
            self._corrupt(path, f"unreadable ({exc})")
            return None
        try:
            tensor, meta = decode_entry(data)
            if meta.get("namespace") != self.namespace or meta.get("key") != key:
                raise CorruptEntry("entry belongs to another namespace or key")
            check(tensor, meta)
        except CorruptEntry as exc:
            self._corrupt(path, str(exc))
            return None
        self.stats.hits += 1
        return tensor

    def _write(self, key: str, tensor: torch.Tensor, meta: dict[str, str]) -> bool:
        if self.write_disabled:
            return False
        try:
            if self.min_free_bytes and shutil.disk_usage(self.dir).free < self.min_free_bytes:
                raise OSError(errno.ENOSPC, f"less than {self.min_free_bytes / 2**30:g} GiB free")
            data = encode_entry(tensor, {**meta, "namespace": self.namespace, "key": key})
            _write_bytes(self.path(key), data)
        except OSError as exc:
            self.stats.write_errors += 1
            self._disable_writes(exc)
            return False
        self.stats.written += 1
        self.stats.bytes_written += len(data)
        return True

    def _disable_writes(self, exc: OSError) -> None:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        self.write_disabled = f"{'disk full: ' if full else ''}{exc}"
        logger.warning(
            "%s %s: cannot write (%s); continuing without writing to the cache "
            "(values are still computed, existing entries still read)",
            self.LABEL,
            self.dir,
            self.write_disabled,
        )

    def _corrupt(self, path: Path, reason: str) -> None:
        self.stats.corrupt += 1
        self.stats.misses += 1
        if self._warned_corrupt < 20:
            self._warned_corrupt += 1
            logger.warning("%s: %s: %s; deleted, recomputing", self.LABEL, path, reason)
        try:
            path.unlink()
        except OSError:
            pass  # another process may have replaced or removed it already

    def disk_usage(self) -> tuple[int, int]:
        """(entries, bytes) stored in this namespace."""
        return _dir_usage(self.dir)

    def summary(self) -> str:
        s = self.stats
        looked = s.hits + s.misses
        rate = f"{100 * s.hits / looked:.1f}% hits" if looked else "no lookups"
        entries, size = self.disk_usage()
        tail = f"; writes disabled ({self.write_disabled})" if self.write_disabled else ""
        return (
            f"{self.LABEL} {self.dir}: {rate} ({s.hits} hits, {s.misses} misses, {s.corrupt} "
            f"corrupt entries replaced), {s.written} written ({s.bytes_written / 2**30:.3f} GiB); "
            f"{entries} entries, {size / 2**30:.3f} GiB on disk{tail}"
        )


class FeatureCache(EntryStore):
    """Content-addressed store of one encoder's features (one namespace of a cache directory)."""

    LABEL = "audio feature cache"
    IDENTITY_FILE = "encoder.json"

    def __init__(self, root: str | os.PathLike, identity: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(root, identity, **kwargs)
        self.storage_dtype = STORAGE_DTYPES[identity["storage_dtype"]]

    @classmethod
    def for_encoder(
        cls, root: str | os.PathLike, encoder: AudioEncoder, storage_dtype: str = "bfloat16", **kwargs: Any
    ) -> FeatureCache:
        return cls(root, encoder_identity(encoder, storage_dtype), **kwargs)

    @property
    def compute_dtype(self) -> str:
        return self.identity["compute_dtype"]

    def key(self, samples: torch.Tensor | np.ndarray) -> str:
        """Entry key of one segment's valid samples ([n] float)."""
        a = np.ascontiguousarray(
            samples.detach().to("cpu", torch.float32).numpy() if torch.is_tensor(samples) else samples,
            dtype=np.float32,
        )
        h = hashlib.sha1(usedforsecurity=False)  # content address, collision-resistant enough
        h.update(self.namespace.encode())
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
        return h.hexdigest()

    def get(self, key: str, num_samples: int, frames: int, hidden: int) -> torch.Tensor | None:
        """The stored features [frames, hidden] of `key`, or None (missing, or unusable and deleted)."""

        def check(tensor: torch.Tensor, meta: dict[str, str]) -> None:
            if meta.get("samples") != str(num_samples):
                raise CorruptEntry(f"entry is for {meta.get('samples')} samples, segment has {num_samples}")
            if tensor.dtype != self.storage_dtype or tuple(tensor.shape) != (frames, hidden):
                raise CorruptEntry(
                    f"entry is {tensor.dtype} {tuple(tensor.shape)}, expected {self.storage_dtype} "
                    f"{(frames, hidden)}"
                )

        return self._read(key, check)

    def put(self, key: str, features: torch.Tensor, num_samples: int, sample_id: str | None = None) -> bool:
        """Store features [T, De]; False when writing is disabled or failed."""
        meta = {"samples": str(num_samples)}
        if sample_id is not None:
            meta["id"] = str(sample_id)
        return self._write(key, features.to("cpu", self.storage_dtype), meta)

    # ------------------------------------------------------------------------- the encoder hook
    @torch.no_grad()
    def features(
        self, encoder: AudioEncoder, audio_values: torch.Tensor, audio_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached-path forward of `encoder`: audio_values [N, S], audio_lengths [N] ->
        feats [N, T, De] in the encoder's dtype (T as the uncached pass gives it), frame_mask [N, T]."""
        device = audio_values.device
        lengths = audio_lengths.to("cpu")
        frames = encoder.frame_lengths(lengths)  # [N]
        total = encoder.output_frames(audio_values.shape[1])
        hidden = encoder.hidden_size
        host = audio_values.detach().to("cpu", torch.float32)  # [N, S]: hashed on the host
        out = torch.zeros(len(lengths), total, hidden, dtype=self.storage_dtype)  # [N, T, De]
        for i, (n, t) in enumerate(zip(lengths.tolist(), frames.tolist())):
            key = self.key(host[i, :n])
            feats = self.get(key, n, t, hidden)
            if feats is None:
                # Exactly the stored definition: this segment alone, rounded to the storage dtype.
                one, _ = encoder.encode(audio_values[i : i + 1, :n], audio_lengths[i : i + 1])
                feats = one[0, :t].to("cpu", self.storage_dtype)
                self.put(key, feats, n)
            out[i, :t] = feats
        dtype = next(encoder.model.parameters()).dtype
        feats = out.to(device, non_blocking=True).to(dtype)
        frame_mask = torch.arange(total)[None, :] < frames[:, None]  # [N, T]
        return feats, frame_mask.to(device)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _dir_usage(directory: Path) -> tuple[int, int]:
    entries = size = 0
    if not directory.is_dir():
        return 0, 0
    for sub in os.scandir(directory):
        if not sub.is_dir():
            continue
        for f in os.scandir(sub.path):
            if f.name.endswith(".safetensors") and not f.name.startswith("."):
                entries += 1
                size += f.stat().st_size
    return entries, size


def encoder_is_frozen(encoder: AudioEncoder) -> bool:
    """Only a fully frozen encoder (no LoRA, no trainable weight) is a fixed function of the audio."""
    return bool(encoder.frozen) and not any(p.requires_grad for p in encoder.parameters())


def attach_feature_cache(
    encoder: AudioEncoder,
    root: str | os.PathLike | None,
    storage_dtype: str = "bfloat16",
    min_free_gb: float = 1.0,
) -> FeatureCache | None:
    """Attach a cache in `root` to `encoder` (frozen only: a training encoder bypasses it, with a log
    line). Call after the encoder's dtype and freezing are final. Returns the cache or None."""
    if root is None or str(root) == "":
        encoder.feature_cache = None
        return None
    if not encoder_is_frozen(encoder):
        logger.info("--audio_feature_cache %s: not used, the audio encoder trains (unfrozen or LoRA)", root)
        encoder.feature_cache = None
        return None
    cache = FeatureCache.for_encoder(root, encoder, storage_dtype=storage_dtype, min_free_gb=min_free_gb)
    encoder.feature_cache = cache
    entries, size = cache.disk_usage()
    logger.info(
        "audio feature cache %s (layer %d, %s storage): %d entries, %.3f GiB on disk",
        cache.dir,
        encoder.layer,
        storage_dtype,
        entries,
        size / 2**30,
    )
    return cache


def report(root: str | os.PathLike) -> str:
    """One line per namespace of a cache directory: what encoder, how many entries, size on disk."""
    root = Path(root)
    lines = []
    for ns in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        try:
            ident = json.loads((ns / "encoder.json").read_text())
            what = (
                f"{ident['config'].get('model_type')} layer {ident['layer']} weights "
                f"{ident['weights_sha256'][:12]} {ident['compute_dtype']}->{ident['storage_dtype']}"
            )
        except (OSError, ValueError, KeyError):
            what = "(no readable encoder.json)"
        entries, size = _dir_usage(ns)
        lines.append(f"{ns.name}  {what}: {entries} entries, {size / 2**30:.3f} GiB")
    return "\n".join(lines) or f"{root}: empty"


def main(argv: list[str] | None = None) -> int:
    from llava.model.feature_cache_fill import main as fill_main

    return fill_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CacheStats",
    "CorruptEntry",
    "EntryStore",
    "FeatureCache",
    "attach_feature_cache",
    "encoder_identity",
    "encoder_is_frozen",
    "namespace_of",
    "report",
    "weights_digest",
]
