from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llava.dataset import sources as sources_mod
from llava.dataset.audio import AudioDecodeError, encode_audio
from llava.dataset.config import DATASET_TYPES, PartitionConfig, SourceSpec, parse_amount
from llava.dataset.importers import write_parquet
from llava.dataset.prompts import PromptBank, Prompter
from llava.dataset.skips import DataError, SkipCounter
from llava.dataset.sources import ParquetSource, parse_word_boundaries

SR = 16000


def _prompter(prompt_format: str = "instruction_first") -> Prompter:
    return Prompter(PromptBank.load(), prompt_format)


def _tone(seconds: float, freq: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _spec(
    path: Path, dtype: str = "Gigaspeech", task: str = "ASR", amount: str = ":100%", lo=None, hi=None, **kw
):
    part = PartitionConfig("train", parse_amount(amount), lo, hi, "train")
    return SourceSpec(
        dataset_type=dtype,
        task=task,
        path=path,
        partition=part,
        columns=kw.pop("columns", DATASET_TYPES[dtype].columns),
        source_language=kw.pop("src", "en"),
        target_language=kw.pop("tgt", None),
        field="test.yml: DATA[0]",
    )


def _asr_rows(n: int = 6) -> list[dict]:
    return [
        {
            "audio": encode_audio(_tone(0.3 + 0.1 * i), SR, "flac"),
            "transcript": f"utterance {i}",
            "duration": 0.3 + 0.1 * i,
        }
        for i in range(n)
    ]


def test_clean_asr_source_is_lazy(tmp_path, monkeypatch):
    path = tmp_path / "asr.parquet"
    write_parquet(_asr_rows(), path, row_group_size=2)
    calls = []
    real = sources_mod.decode_audio
    monkeypatch.setattr(sources_mod, "decode_audio", lambda *a, **k: calls.append(1) or real(*a, **k))
    skips = SkipCounter()
    src = ParquetSource(_spec(path), skips=skips)
    assert len(src) == 6 and not skips and calls == []  # nothing decoded at load
    np.testing.assert_allclose(src.durations, 0.3 + 0.1 * np.arange(6))
    s = src.sample(2, _prompter())
    assert len(calls) == 1
    assert s["id"] == "Gigaspeech.ASR.en:asr:2" and s["task"] == "ASR"
    assert s["target"] == s["transcript"] == "utterance 2"
    assert s["prompt"].endswith("<audio>") and s["audio"].dtype == np.float32
    assert s["duration"] == pytest.approx(0.5) and s["word_boundaries"] is None


def test_amount_slice_reads_row_range_and_keeps_file_row_ids(tmp_path):
    path = tmp_path / "asr.parquet"
    write_parquet(_asr_rows(10), path, row_group_size=3)
    src = ParquetSource(_spec(path, amount="20:50%"))
    assert len(src) == 3
    assert [src.row_id(k) for k in range(3)] == [
        "Gigaspeech.ASR.en:asr:2",
        "Gigaspeech.ASR.en:asr:3",
        "Gigaspeech.ASR.en:asr:4",
    ]
    assert src.text("transcript", 0) == "utterance 2"
    np.testing.assert_allclose(src.durations, [0.5, 0.6, 0.7])


def _bad_rows() -> list[dict]:
    rows = _asr_rows(12)
    rows[0]["transcript"] = "   "  # empty_text
    rows[1]["transcript"] = None  # missing_value
    rows[2]["audio"], rows[2]["duration"] = encode_audio(_tone(0.05), SR, "flac"), 0.05  # too_short
    rows[3]["audio"], rows[3]["duration"] = encode_audio(_tone(2.5), SR, "flac"), 2.5  # too_long
    rows[4]["audio"] = {"bytes": b"definitely not audio", "path": None}  # undecodable_audio
    rows[5]["audio"] = encode_audio(np.zeros(0, np.float32), SR, "wav")  # empty_audio
    rows[6]["audio"] = {"bytes": None, "path": None}  # missing_audio
    return rows


EXPECTED = {
    "empty_text": 1,
    "missing_value": 1,
    "too_short": 1,
    "too_long": 1,
    "undecodable_audio": 1,
    "empty_audio": 1,
    "missing_audio": 1,
}


def test_each_bad_metadata_case_is_counted(tmp_path):
    path = tmp_path / "bad.parquet"
    write_parquet(_bad_rows(), path)
    skips = SkipCounter()
    src = ParquetSource(_spec(path, lo=0.1, hi=2), skips=skips)
    assert skips.as_dict() == EXPECTED
    assert len(src) == 12 - sum(EXPECTED.values())
    assert skips.seen == 12
    summary = skips.summary()
    assert summary.startswith("skipped 7 of 12 samples:") and "too_long=1" in summary
    assert "Gigaspeech.ASR.en:bad" in summary


def test_strict_mode_raises_naming_file_and_row(tmp_path):
    path = tmp_path / "bad.parquet"
    write_parquet(_bad_rows(), path)
    with pytest.raises(DataError, match=r"bad\.parquet: row 1: missing_value: .transcript. is null"):
        ParquetSource(_spec(path), strict=True)


def test_array_encoded_audio_nan_and_missing_duration(tmp_path):
    rows = []
    for i in range(4):
        wave = _tone(0.25 * (i + 1), sr=8000)
        if i == 1:
            wave[10] = np.nan
        rows.append({"audio": {"array": wave.tolist(), "sampling_rate": 8000}, "transcript": f"t {i}"})
    rows.append({"audio": {"array": [], "sampling_rate": 8000}, "transcript": "empty"})
    path = tmp_path / "arr.parquet"
    write_parquet(rows, path, row_group_size=2)
    skips = SkipCounter()
    src = ParquetSource(_spec(path), skips=skips)  # no duration column: measured from the arrays
    assert skips.as_dict() == {"non_finite_audio": 1, "empty_audio": 1}
    np.testing.assert_allclose(src.durations, [0.25, 0.75, 1.0])
    s = src.sample(1, _prompter())
    assert len(s["audio"]) == 12000  # 0.75 s resampled to 16 kHz


def test_nan_audio_found_at_decode_time_without_header_check(tmp_path):
    audio = {"array": [0.0, float("nan")] * 100, "sampling_rate": SR}
    nan_path = tmp_path / "nan.parquet"
    write_parquet([{"audio": audio, "transcript": "x", "duration": 0.0125}], nan_path)
    src = ParquetSource(_spec(nan_path), check_audio=False)
    assert len(src) == 1
    with pytest.raises(AudioDecodeError) as info:
        src.sample(0, _prompter())
    assert info.value.reason == "non_finite_audio"


def test_missing_column_counts_all_rows_or_raises(tmp_path):
    path = tmp_path / "nocol.parquet"
    write_parquet([{"audio": r["audio"], "text": r["transcript"]} for r in _asr_rows(3)], path)
    skips = SkipCounter()
    src = ParquetSource(_spec(path), skips=skips)
    assert len(src) == 0 and skips.as_dict() == {"missing_column": 3}
    with pytest.raises(DataError, match=r"nocol\.parquet: column 'transcript' \(transcript\) missing"):
        ParquetSource(_spec(path), strict=True)
    # the generic type maps the column instead
    cols = dict(DATASET_TYPES["Parquet"].columns, transcript="text")
    assert len(ParquetSource(_spec(path, dtype="Parquet", columns=cols))) == 3


def test_st_sqa_and_instruct_samples(tmp_path):
    bank = _prompter()
    st = tmp_path / "st.parquet"
    write_parquet(
        [
            {
                "audio": encode_audio(_tone(0.5), SR),
                "sentence": "hello",
                "translation": "hallo",
                "duration": 0.5,
            }
        ],
        st,
    )
    s = ParquetSource(_spec(st, dtype="MuSTC", task="ST", tgt="de")).sample(0, bank)
    assert (s.target, s.transcript, s.target_lang) == ("hallo", "hello", "de")
    assert "German" in s["prompt"] and s["prompt"].count("<audio>") == 1

    sqa = tmp_path / "sqa.parquet"
    audio = encode_audio(_tone(0.5), SR)
    write_parquet(
        [
            {"audio": audio, "question": "Who came?\n<audio>", "answer": ["Anna", "anna"], "duration": 0.5},
            {"audio": audio, "question": "Where?", "answer": ["home"], "duration": 0.5},
            {"audio": audio, "question": "<audio> twice <audio>", "answer": ["x"], "duration": 0.5},
            {"audio": audio, "question": "When?", "answer": [], "duration": 0.5},
        ],
        sqa,
    )
    skips = SkipCounter()
    src = ParquetSource(_spec(sqa, dtype="Spoken_SQuAD", task="SQA"), skips=skips)
    assert skips.as_dict() == {"bad_prompt": 1, "empty_text": 1}
    a, b = src.sample(0, bank), src.sample(1, bank)
    assert (
        a["prompt"] == "Who came?\n<audio>" and a["target"] == "Anna" and a["references"] == ["Anna", "anna"]
    )
    assert b["prompt"].count("<audio>") == 1 and "Where?" in b["prompt"] and b["transcript"] is None

    ins = tmp_path / "ins.parquet"
    write_parquet(
        [
            {"audio": audio, "prompt": "Describe the voice.", "target": "calm", "duration": 0.5},
            {"audio": audio, "prompt": None, "target": "loud", "duration": 0.5},
        ],
        ins,
    )
    src = ParquetSource(
        _spec(ins, dtype="Parquet", task="INSTRUCT", columns=DATASET_TYPES["Parquet"].columns)
    )
    assert src.sample(0, bank)["prompt"] == "Describe the voice.\n<audio>"
    assert src.sample(1, bank)["prompt"] == PromptBank.load().choose("INSTRUCT")


def test_word_boundaries_checked_when_needed(tmp_path):
    wb = [[0.0, 0.2, "hello"], [0.2, 0.5, "world"]]
    rows = [
        {
            "audio": encode_audio(_tone(0.6), SR),
            "transcription": "hello world",
            "word_boundaries": json.dumps(wb),
        },
        {
            "audio": encode_audio(_tone(0.6), SR),
            "transcription": "bad",
            "word_boundaries": '[[0.5, 0.1, "x"]]',
        },
        {"audio": encode_audio(_tone(0.6), SR), "transcription": "none", "word_boundaries": None},
    ]
    for r in rows:
        r["duration"] = 0.6
    path = tmp_path / "en-de_train_processed.parquet"
    write_parquet(rows, path)
    skips = SkipCounter()
    src = ParquetSource(_spec(path, dtype="Giga_NWP", tgt="de"), skips=skips, need_word_boundaries=True)
    assert skips.as_dict() == {"bad_word_boundaries": 2} and len(src) == 1
    assert src.sample(0, _prompter())["word_boundaries"] == wb
    assert len(ParquetSource(_spec(path, dtype="Giga_NWP", tgt="de"))) == 3  # not needed: not checked


def test_parse_word_boundaries():
    assert parse_word_boundaries([{"start": 0, "end": 1, "word": " a "}]) == [[0.0, 1.0, "a"]]
    for bad in ("[]", '[[1, 0, "a"]]', "[[0, 1]]", '[[0, 1, ""]]', '[[1, 2, "a"], [0, 1, "b"]]', "nope"):
        with pytest.raises(ValueError):
            parse_word_boundaries(bad)


def test_array_audio_with_duration_column_and_bad_duration_type(tmp_path):
    path = tmp_path / "arrdur.parquet"
    rows = [
        {"audio": {"array": _tone(0.5).tolist(), "sampling_rate": SR}, "transcript": "a", "duration": 0.5}
    ]
    write_parquet(rows, path)
    src = ParquetSource(_spec(path))
    assert len(src) == 1 and src.durations.tolist() == [0.5]
    bad = tmp_path / "strdur.parquet"
    write_parquet([dict(rows[0], duration="half a second")], bad)
    with pytest.raises(DataError, match=r"strdur\.parquet: column 'duration' is not numeric seconds"):
        ParquetSource(_spec(bad))


def test_real_duration_overrides_a_wrong_column(tmp_path, caplog):
    rows = _asr_rows(3)
    rows[1]["duration"] = 0.1  # the audio is 0.4 s: a wrong label must not pass max_duration
    rows[2]["duration"] = 0.52  # 0.5 s of audio: 4 % off, no warning for it
    path = tmp_path / "dur.parquet"
    write_parquet(rows, path)
    skips = SkipCounter()
    with caplog.at_level("WARNING", logger="llava.dataset.sources"):
        src = ParquetSource(_spec(path, hi=0.35), skips=skips)
    assert skips.as_dict() == {"too_long": 2} and len(src) == 1
    assert src.duration_mismatches == 1
    assert "1 row(s) whose duration column differs from the audio by more than 10 %" in caplog.text
    assert "row 1: column 0.1 s, audio 0.4 s" in caplog.text
    # without the header check the column is all there is
    assert len(ParquetSource(_spec(path, hi=0.35), check_audio=False)) == 2


def test_reference_and_row_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "sqa.parquet"
    audio = encode_audio(_tone(0.5), SR)
    write_parquet([{"audio": audio, "question": "Who?", "answer": ["Ann", "ann."], "duration": 0.5}], path)
    monkeypatch.setattr(sources_mod, "decode_audio", lambda *a, **k: pytest.fail("decoded"))
    src = ParquetSource(_spec(path, dtype="Spoken_SQuAD", task="SQA"))
    assert src.row(0) == {"question": "Who?", "answer": ["Ann", "ann."], "duration": 0.5}
    assert src.reference(0) == ["Ann", "ann."] and src.reference(0, no_punctuation=True) == ["Ann", "ann"]


def test_prompt_layouts_of_a_row(tmp_path):
    path = tmp_path / "sqa.parquet"
    audio = encode_audio(_tone(0.5), SR)
    write_parquet(
        [{"audio": audio, "question": "Who came?\n<audio>", "answer": "Ann", "duration": 0.5}], path
    )
    src = ParquetSource(_spec(path, dtype="Spoken_SQuAD", task="SQA"))
    instruction = PromptBank.load().instructions("SQA")[0]
    assert src.sample(0, _prompter("original")).prompt == f"<audio>\n{instruction} Who came?"
    assert src.sample(0, _prompter("instruction_first")).prompt == "Who came?\n<audio>"
