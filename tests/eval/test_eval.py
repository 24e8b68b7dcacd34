"""Evaluation entry point: end to end on a tiny checkpoint, resume after a kill, count checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

import llava.eval.eval as ev
from llava.dataset.config import ConfigError
from llava.eval.generation import GenerationSettings
from llava.eval.metrics import score
from llava.model import apply_training_mode, build_model, load_pretrained_model, save_trainable
from tests.conftest import TINY_QFORMER

REPO = Path(__file__).resolve().parents[2]
SR = 16000
SENTENCES = [
    ("the quick brown fox", "der schnelle braune fuchs"),
    ("a small cat sleeps", "eine kleine katze schläft"),
    ("one two three", "eins zwei drei"),
    ("what does the speaker say", "was sagt der sprecher"),
    ("transcribe the audio", "transkribiere das audio"),
    ("the lazy dog", "der faule hund"),
]


def _encoded(wave: np.ndarray, fmt: str, name: str) -> dict:
    import io

    buf = io.BytesIO()
    sf.write(buf, wave, SR, format=fmt.upper(), subtype="PCM_16")
    return {"bytes": buf.getvalue(), "path": name}


def write_test_data(root: Path, n: int = len(SENTENCES)) -> Path:
    """MuSTC layout `{datapath}/en-de/tst.parquet` (+ a Spoken-SQuAD file) and a data config using them."""
    rng = np.random.default_rng(0)
    mustc = root / "mustc" / "en-de"
    mustc.mkdir(parents=True)
    rows = {"audio": [], "sentence": [], "translation": [], "duration": []}
    for i, (en, de) in enumerate(SENTENCES[:n]):
        seconds = 0.3 + 0.17 * i
        wave = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        fmt = "flac" if i % 2 else "wav"
        rows["audio"].append(_encoded(wave, fmt, f"utt{i}.{fmt}"))
        rows["sentence"].append(en)
        rows["translation"].append(de)
        rows["duration"].append(len(wave) / SR)
    pq.write_table(pa.table(rows), mustc / "tst.parquet")

    sqa = {"audio": [], "question": [], "answer": [], "duration": []}
    for i in range(3):
        wave = (0.1 * rng.standard_normal(8000 + 2000 * i)).astype(np.float32)
        sqa["audio"].append(_encoded(wave, "flac", f"q{i}.flac"))
        sqa["question"].append(f"what is number {i}?\n<audio>")
        sqa["answer"].append([f"number {i}", f"{i}"])
        sqa["duration"].append(len(wave) / SR)
    pq.write_table(pa.table(sqa), root / "spoken_squad_test.parquet")

    config = root / "eval.yml"
    config.write_text(
        f"""DATA:
  - MuSTC:
      datapath: {root / "mustc"}
      task: ASR
      languages: [en-de]
      partitions:
        tst: {{destination: test}}
  - MuSTC:
      datapath: {root / "mustc"}
      task: ST
      languages: [en-de]
      partitions:
        tst: {{destination: test}}
  - Spoken_SQuAD:
      datapath: {root}
      task: SQA
      partitions:
        test: {{destination: test}}
        train: {{destination: train}}
"""
    )
    pq.write_table(pa.table(sqa), root / "spoken_squad_train.parquet")
    return config


def make_checkpoint(base_dirs, out: Path) -> Path:
    """A tiny checkpoint whose (random) projector is scaled up so the audio changes the outputs."""
    enc_dir, llm_dir = base_dirs
    torch.manual_seed(0)
    model, _ = build_model(str(enc_dir), str(llm_dir), projector_config=TINY_QFORMER)
    apply_training_mode(model)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(5.0)
    return save_trainable(model, out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_base_dirs):
    root = tmp_path_factory.mktemp("evaldata")
    return make_checkpoint(tiny_base_dirs, root / "ckpt"), write_test_data(root)


@pytest.fixture(scope="module")
def asr_only(setup):
    """The ASR test set alone, and the checkpoint loaded once (for the resume tests)."""
    ckpt, config = setup
    text = config.read_text()
    asr = config.with_name("asr.yml")
    asr.write_text(text[: text.index("  - MuSTC:", text.index("task: ASR"))])
    return load_pretrained_model(ckpt), asr, str(ckpt)


STEMS = {"MuSTC_ASR_en-de_tst": 6, "MuSTC_ST_en-de_tst": 6, "Spoken_SQuAD_SQA_en_test": 3}
ARGS = ["--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]


def _run(ckpt, config, results, *extra):
    return ev.main(
        ["--model-path", str(ckpt), "--dataset", str(config), "--results-dir", str(results), *ARGS, *extra]
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_writes_predictions_scores_and_alignment(setup, tmp_path):
    ckpt, config = setup
    assert _run(ckpt, config, tmp_path, "--contrastive") == 0
    for stem, n in STEMS.items():
        preds = _lines(tmp_path / f"{stem}_preds.jsonl")
        assert len(preds) == n and len({p["id"] for p in preds}) == n
        scores = json.loads((tmp_path / f"{stem}_scores.json").read_text())
        assert scores["num_predictions"] == n and scores["num_failed"] == 0
    asr = _lines(tmp_path / "MuSTC_ASR_en-de_tst_preds.jsonl")
    assert [p["reference"] for p in asr] == [en for en, _ in SENTENCES]
    assert [p["id"].rsplit(":", 1)[1] for p in asr] == [str(i) for i in range(6)] and asr[0]["task"] == "ASR"
    st = _lines(tmp_path / "MuSTC_ST_en-de_tst_preds.jsonl")
    assert [p["reference"] for p in st] == [de for _, de in SENTENCES] and st[0]["source"] == SENTENCES[0][0]
    sqa = _lines(tmp_path / "Spoken_SQuAD_SQA_en_test_preds.jsonl")
    assert sqa[1]["references"] == ["number 1", "1"]

    # Scores are the metrics of what the files hold.
    asr_scores = json.loads((tmp_path / "MuSTC_ASR_en-de_tst_scores.json").read_text())
    expected = score("ASR", [p["prediction"] for p in asr], [p["reference"] for p in asr])
    assert asr_scores["wer"] == pytest.approx(expected["wer"])
    assert "bleu_signature" in json.loads((tmp_path / "MuSTC_ST_en-de_tst_scores.json").read_text())
    assert "f1" in json.loads((tmp_path / "Spoken_SQuAD_SQA_en_test_scores.json").read_text())

    # Alignment diagnostics for the ASR set only, one entry per layer of resolve_layers("all", 2).
    alignment = json.loads((tmp_path / "MuSTC_ASR_en-de_tst_alignment.json").read_text())
    assert sorted(alignment["layers"]) == ["0", "1", "2"]
    assert alignment["layers"]["0"]["num_pairs"] == 6
    assert (tmp_path / "MuSTC_ASR_en-de_tst_alignment.png").stat().st_size > 0
    assert not (tmp_path / "MuSTC_ST_en-de_tst_alignment.json").exists()


def _evaluate(asr_only, results, **kwargs):
    (model, tok), config, ckpt = asr_only
    kwargs = {"settings": GenerationSettings(max_new_tokens=6), "batch_size": 4, "progress": False, **kwargs}
    return ev.evaluate(model, tok, config, results, model_path=ckpt, **kwargs)


ASR = "MuSTC_ASR_en-de_tst"


def test_killed_run_resumes_to_identical_files(asr_only, tmp_path, monkeypatch):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _evaluate(asr_only, full)

    real = ev.generate_batch
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "generate_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(asr_only, resumed)
    monkeypatch.setattr(ev, "generate_batch", real)
    preds = resumed / f"{ASR}_preds.jsonl"
    text = preds.read_text()
    assert text.count("\n") == 4  # the first batch was written before the kill
    preds.write_text(text[: -len(text.splitlines()[-1]) // 2])  # the kill also cut the last line short
    assert not (resumed / f"{ASR}_scores.json").exists()

    _evaluate(asr_only, resumed)
    for suffix in ("_preds.jsonl", "_scores.json"):
        assert (resumed / f"{ASR}{suffix}").read_text() == (full / f"{ASR}{suffix}").read_text()


def test_limit_then_full_run_reuses_predictions(asr_only, tmp_path, monkeypatch):
    scores = _evaluate(asr_only, tmp_path, limit=2)
    assert scores[ASR]["num_predictions"] == 2 and len(_lines(tmp_path / f"{ASR}_preds.jsonl")) == 2
    generated = []
    real = ev.generate_batch
    monkeypatch.setattr(
        ev, "generate_batch", lambda m, t, b, *a: generated.extend(b["ids"]) or real(m, t, b, *a)
    )
    assert _evaluate(asr_only, tmp_path)[ASR]["num_predictions"] == 6
    assert sorted(i.rsplit(":", 1)[1] for i in generated) == ["2", "3", "4", "5"]
    assert len(_lines(tmp_path / f"{ASR}_preds.jsonl")) == 6


def test_resume_with_other_settings_is_refused(asr_only, tmp_path):
    _evaluate(asr_only, tmp_path, limit=1)
    newline = GenerationSettings(max_new_tokens=6, stop_at_newline=True)
    with pytest.raises(ValueError, match="--overwrite"):
        _evaluate(asr_only, tmp_path, limit=1, settings=newline)
    _evaluate(asr_only, tmp_path, limit=1, settings=newline, overwrite=True)


def test_undecodable_audio_gets_a_counted_empty_prediction(asr_only, tmp_path, monkeypatch):
    from llava.dataset.dataset import SpeechDataset

    real = SpeechDataset.__getitem__
    monkeypatch.setattr(SpeechDataset, "__getitem__", lambda self, i: None if i == 3 else real(self, i))
    scores = _evaluate(asr_only, tmp_path)[ASR]
    assert scores["num_predictions"] == 6 and scores["num_failed"] == 1
    failed = [p for p in _lines(tmp_path / f"{ASR}_preds.jsonl") if p.get("failed")]
    assert len(failed) == 1 and failed[0]["failed"] == "bad_audio"
    assert failed[0]["prediction"] == "" and failed[0]["reference"] == SENTENCES[3][0]


def test_prediction_count_must_match_references(tmp_path):
    records = {f"u{i}": {"id": f"u{i}", "prediction": "a", "reference": "a"} for i in range(3)}
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        ev.score_predictions(records, ["u0", "u1", "u2", "u3"], "ASR")
    assert ev.score_predictions(records, ["u0", "u1", "u2"], "ASR")["wer"] == 0.0
    with pytest.raises(ValueError, match="predictions for"):
        score("ST", ["a", "b"], ["a"])


def test_prediction_file_reading(tmp_path):
    path = tmp_path / "x_preds.jsonl"
    good = [json.dumps({"id": f"u{i}", "prediction": str(i)}) for i in range(3)]
    path.write_text("\n".join(good) + "\n" + good[0][:7])  # truncated last line
    assert sorted(ev.read_predictions(path)) == ["u0", "u1", "u2"]
    assert path.read_text() == "\n".join(good) + "\n"  # repaired for appending
    path.write_text(good[0] + "\n{broken\n" + good[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        ev.read_predictions(path)
    path.write_text(good[0])  # complete record, no newline yet
    assert list(ev.read_predictions(path)) == ["u0"] and path.read_text() == good[0] + "\n"


def test_missing_test_file_is_named(setup, tmp_path):
    _, config = setup
    bad = tmp_path / "bad.yml"
    bad.write_text(
        config.read_text().replace("tst: {destination: test}", "tst-COMMON: {destination: test}", 1)
    )
    with pytest.raises(ConfigError, match="tst-COMMON.parquet"):
        ev.build_test_sets(bad)


def test_alignment_eval_on_samples(setup, tiny_model):
    model, tok = tiny_model
    rng = np.random.default_rng(0)
    samples = [
        {"audio": (0.1 * rng.standard_normal(4000 + 1000 * i)).astype(np.float32), "transcript": text}
        for i, (text, _) in enumerate(SENTENCES)
    ]
    samples.insert(2, None)
    samples.append({"audio": samples[0]["audio"], "transcript": ""})  # skipped: no transcript
    out = ev.alignment_eval(model, tok, samples, layers="0,last", batch_size=4)
    assert sorted(out) == [0, 2] and out[0]["num_pairs"] == len(SENTENCES)
    assert all(0 <= m["r1_speech2text"] <= 1 for m in out.values())


def test_runs_as_a_script_from_anywhere(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "llava" / "eval" / "eval.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--results-dir" in proc.stdout and "--stop-at-newline" in proc.stdout
