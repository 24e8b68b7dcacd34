from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from llava.dataset.audio import AudioDecodeError, audio_info, decode_audio, encode_audio


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encoded(wave: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype="PCM_16" if fmt != "OGG" else "VORBIS")
    return buf.getvalue()


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_bytes_encodings_roundtrip(fmt):
    wave = _sine(440, 16000, 0.5)
    out = decode_audio({"bytes": _encoded(wave, 16000, fmt), "path": "x." + fmt.lower()})
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == len(wave)
    if fmt != "OGG":  # lossless up to 16-bit quantisation
        np.testing.assert_allclose(out, wave, atol=1e-4)
    assert abs(_peak_hz(out, 16000) - 440) < 5


def test_path_used_when_bytes_missing(tmp_path):
    wave = _sine(300, 16000, 0.25)
    sf.write(tmp_path / "a.flac", wave, 16000)
    out = decode_audio({"bytes": None, "path": "a.flac"}, base_dir=tmp_path)
    np.testing.assert_allclose(out, wave, atol=1e-4)
    assert len(decode_audio(str(tmp_path / "a.flac"))) == len(wave)


def test_decoded_array_encoding_and_stereo_downmix():
    left, right = _sine(200, 16000, 0.2), _sine(200, 16000, 0.2, amp=0.1)
    out = decode_audio({"array": np.stack([left, right]), "sampling_rate": 16000})  # [C, S]
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)
    stereo = _encoded(np.stack([left, right], axis=1), 16000, "WAV")  # [S, C] in the file
    np.testing.assert_allclose(decode_audio({"bytes": stereo, "path": None}), (left + right) / 2, atol=1e-4)
    out = decode_audio({"array": left.tolist(), "sampling_rate": 16000})
    assert out.dtype == np.float32 and len(out) == len(left)


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100])
def test_resampling_keeps_length_and_frequency(orig_sr):
    wave = _sine(440, orig_sr, 1.0)
    out = decode_audio({"array": wave, "sampling_rate": orig_sr}, target_sr=16000)
    assert abs(len(out) - 16000) <= 1
    assert abs(_peak_hz(out, 16000) - 440) < 3
    out = decode_audio({"bytes": _encoded(wave, orig_sr, "FLAC"), "path": None}, target_sr=16000)
    assert abs(len(out) - 16000) <= 1 and abs(_peak_hz(out, 16000) - 440) < 3


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"bytes": b"not audio at all", "path": None}, "undecodable_audio"),
        ({"bytes": None, "path": "/does/not/exist.wav"}, "undecodable_audio"),
        ({"array": np.zeros(0, np.float32), "sampling_rate": 16000}, "empty_audio"),
        ({"array": np.array([0.1, np.nan, 0.2], np.float32), "sampling_rate": 16000}, "non_finite_audio"),
        ({"array": np.array([0.1, np.inf], np.float32), "sampling_rate": 16000}, "non_finite_audio"),
        ({"array": np.ones(10, np.float32), "sampling_rate": None}, "undecodable_audio"),
        ({"bytes": None, "path": None}, "missing_audio"),
        (None, "missing_audio"),
        (12345, "undecodable_audio"),
    ],
)
def test_bad_audio_raises_specific_error(value, reason):
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(value)
    assert info.value.reason == reason


def test_empty_encoded_file():
    with pytest.raises(AudioDecodeError) as info:
        decode_audio({"bytes": _encoded(np.zeros(0, np.float32), 16000, "WAV"), "path": None})
    assert info.value.reason == "empty_audio"


def test_audio_info_and_encode():
    wave = _sine(100, 8000, 0.75)
    value = encode_audio(wave, 8000, "flac", path="x.flac")
    assert set(value) == {"bytes", "path"} and value["path"] == "x.flac"
    assert audio_info(value) == (6000, 8000)
    assert audio_info({"array": wave, "sampling_rate": 8000}) == (6000, 8000)
    with pytest.raises(AudioDecodeError):
        audio_info({"bytes": b"junk", "path": None})
    with pytest.raises(ValueError, match="unsupported audio format"):
        encode_audio(wave, 8000, "mp4")


def test_fifo_and_folder_are_rejected_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears
    for value in (str(fifo), {"bytes": None, "path": "pipe.wav"}, str(tmp_path)):
        for read in (
            lambda v: decode_audio(v, base_dir=tmp_path),
            lambda v: audio_info(v, base_dir=tmp_path),
        ):
            with pytest.raises(AudioDecodeError, match="not a regular file") as info:
                read(value)
            assert info.value.reason == "undecodable_audio"
    with pytest.raises(AudioDecodeError, match="audio file not found") as info:
        decode_audio(str(tmp_path / "missing.wav"))
    assert info.value.reason == "undecodable_audio"
