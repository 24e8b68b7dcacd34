"""Audio decoding and encoding: parquet `audio` values <-> float32 mono waveforms.

Parquet files store audio either encoded (`{"bytes": ..., "path": ...}`, the layout `datasets` writes
for wav/flac/ogg/mp3) or decoded (`{"array": [...], "sampling_rate": sr}`). Both end up as a float32
mono waveform at the encoder's sampling rate. Decoding uses `soundfile` and resampling `soxr`
(`datasets`' own decoding needs torchcodec, which is not available everywhere).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

DEFAULT_SAMPLING_RATE = 16000

# Skip reasons (also the keys of the skip summary).
UNDECODABLE = "undecodable_audio"
EMPTY = "empty_audio"
NON_FINITE = "non_finite_audio"
MISSING = "missing_audio"


class AudioDecodeError(ValueError):
    """Audio that cannot be turned into a usable waveform; `reason` is a short skip-counter key."""

    def __init__(self, message: str, reason: str = UNDECODABLE):
        super().__init__(message)
        self.reason = reason


def _resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> Path:
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        return Path(base_dir) / p
    return p


def _regular_file(path: Path) -> str:
    """`path` as a string if it is a regular file (after symlinks). A FIFO, device or folder would make
    the reader block or fail obscurely: it is rejected, like a missing file, as unusable audio."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AudioDecodeError(f"audio file not found: {path}", UNDECODABLE) from None
    except OSError as exc:
        raise AudioDecodeError(f"cannot read audio file {path}: {exc}", UNDECODABLE) from exc
    if not stat.S_ISREG(mode):
        raise AudioDecodeError(f"audio path is not a regular file: {path}", UNDECODABLE)
    return str(path)


def _read_encoded(source: Any, what: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the file's sampling rate."""
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)  # [frames, channels]
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioDecodeError(f"cannot decode audio from {what}: {exc}", UNDECODABLE) from exc
    return (data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)), int(sr)


def _to_mono(data: np.ndarray) -> np.ndarray:
    if data.ndim == 1 or data.size == 0:
        return data.reshape(-1)
    if data.ndim != 2:
        raise AudioDecodeError(f"audio array has {data.ndim} dimensions, expected 1 or 2", UNDECODABLE)
    # Decoded arrays may be [channels, samples] or [samples, channels]: the channel axis is the short one.
    channel_axis = 0 if data.shape[0] < data.shape[1] else 1
    return data.mean(axis=channel_axis)


def load_waveform(value: Any, *, base_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, int]:
    """Decode a parquet audio value to (float32 mono waveform, its own sampling rate), no resampling.

    Accepted values: `{"bytes", "path"}` (bytes preferred; `path` is read when bytes is None, relative
    paths first against `base_dir`), `{"array", "sampling_rate"}`, raw bytes, or a file path.
    """
    if value is None:
        raise AudioDecodeError("audio value is null", MISSING)
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            sr = value.get("sampling_rate")
            if not sr or int(sr) <= 0:
                raise AudioDecodeError(f"decoded audio has invalid sampling_rate {sr!r}", UNDECODABLE)
            try:
                data = np.asarray(value["array"], dtype=np.float32)
            except (ValueError, TypeError):
                # multi-channel arrays read from Arrow arrive as an array of per-channel arrays
                try:
                    data = np.stack([np.asarray(c, dtype=np.float32) for c in value["array"]])
                except (ValueError, TypeError) as exc:
                    raise AudioDecodeError(f"audio array is not numeric: {exc}", UNDECODABLE) from exc
            return _to_mono(data), int(sr)
        if value.get("bytes") is not None:
            return _read_encoded(io.BytesIO(value["bytes"]), "bytes")
        if value.get("path"):
            path = _resolve_path(value["path"], base_dir)
            return _read_encoded(_regular_file(path), str(path))
        raise AudioDecodeError("audio value has neither bytes, path nor array", MISSING)
    if isinstance(value, bytes | bytearray | memoryview):
        return _read_encoded(io.BytesIO(bytes(value)), "bytes")
    if isinstance(value, str | os.PathLike):
        path = _resolve_path(value, base_dir)
        return _read_encoded(_regular_file(path), str(path))
    raise AudioDecodeError(f"unsupported audio value of type {type(value).__name__}", UNDECODABLE)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr (float32 in, float32 out)."""
    if orig_sr == target_sr:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def decode_audio(
    value: Any, target_sr: int = DEFAULT_SAMPLING_RATE, *, base_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """Decode a parquet audio value to a float32 mono waveform at `target_sr` ([S]).

    Raises `AudioDecodeError` (with `.reason`) on undecodable, empty or non-finite audio, so one bad
    row can be skipped and counted instead of killing a run.
    """
    wave, sr = load_waveform(value, base_dir=base_dir)
    if wave.size == 0:
        raise AudioDecodeError("audio is empty (0 samples)", EMPTY)
    if not np.isfinite(wave).all():
        raise AudioDecodeError("audio contains NaN or infinite samples", NON_FINITE)
    wave = resample(wave, sr, target_sr)
    if wave.size == 0:
        raise AudioDecodeError(f"audio is empty after resampling {sr} -> {target_sr} Hz", EMPTY)
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_info(value: Any, *, base_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """(num_frames, sampling_rate) from the header only; cheap enough to pre-check every row at load."""
    if value is None:
        raise AudioDecodeError("audio value is null", MISSING)
    if isinstance(value, Mapping) and value.get("array") is not None:
        sr = value.get("sampling_rate")
        if not sr or int(sr) <= 0:
            raise AudioDecodeError(f"decoded audio has invalid sampling_rate {sr!r}", UNDECODABLE)
        arr = value["array"]
        frames = len(arr)
        if frames and np.ndim(arr[0]) == 1:  # [C, S] or [S, C]: the samples are the long axis
            frames = max(frames, len(arr[0]))
        return frames, int(sr)
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            source, what = io.BytesIO(value["bytes"]), "bytes"
        elif value.get("path"):
            path = _resolve_path(value["path"], base_dir)
            source, what = _regular_file(path), str(path)
        else:
            raise AudioDecodeError("audio value has neither bytes, path nor array", MISSING)
    elif isinstance(value, bytes | bytearray | memoryview):
        source, what = io.BytesIO(bytes(value)), "bytes"
    elif isinstance(value, str | os.PathLike):
        path = _resolve_path(value, base_dir)
        source, what = _regular_file(path), str(path)
    else:
        raise AudioDecodeError(f"unsupported audio value of type {type(value).__name__}", UNDECODABLE)
    try:
        with sf.SoundFile(source) as f:  # header only (cheaper than sf.info, which also formats a summary)
            return int(f.frames), int(f.samplerate)
    except Exception as exc:
        raise AudioDecodeError(f"cannot read audio header from {what}: {exc}", UNDECODABLE) from exc


def encode_audio(
    wave: np.ndarray, sampling_rate: int, fmt: str = "flac", path: str | None = None
) -> dict[str, Any]:
    """Encode a waveform ([S] or [S, C]) as `{"bytes", "path"}` (16-bit PCM in a FLAC/WAV/OGG container).

    `path` is only a label stored next to the bytes (what `datasets` does); nothing is written to disk.
    """
    fmt = fmt.lower()
    subtypes = {"flac": "PCM_16", "wav": "PCM_16", "ogg": "VORBIS"}
    if fmt not in subtypes:
        raise ValueError(f"unsupported audio format {fmt!r}; known: {sorted(subtypes)}")
    data = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data, int(sampling_rate), format=fmt.upper(), subtype=subtypes[fmt])
    return {"bytes": buf.getvalue(), "path": path}
