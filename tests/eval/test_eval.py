"""Evaluation entry point: end to end on a tiny checkpoint, resume and its fingerprint, exact counts."""

from __future__ import annotations

import io
import json
import runpy
import shutil
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
import llava.inference.runner as runner
from llava.dataset.config import ConfigError
from llava.eval.metrics import score
from llava.inference.generation import GenerationSettings
from llava.model import load_pretrained_model, save_trainable

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
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format=fmt.upper(), subtype="PCM_16")
    return {"bytes": buf.getvalue(), "path": name}


def _mustc_rows(sentences, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    rows = {"audio": [], "sentence": [], "translation": [], "duration": []}
    for i, (en, de) in enumerate(sentences):
        wave = (0.1 * rng.standard_normal(int((0.3 + 0.17 * i) * SR))).astype(np.float32)
        fmt = "flac" if i % 2 else "wav"
        rows["audio"].append(_encoded(wave, fmt, f"utt{i}.{fmt}"))
        rows["sentence"].append(en)
        rows["translation"].append(de)
        rows["duration"].append(len(wave) / SR)
    return rows


def write_test_data(root: Path) -> Path:
    """MuSTC layout `{datapath}/en-de/tst.parquet` (+ a Spoken-SQuAD file) and a data config using them."""
    rng = np.random.default_rng(0)
    mustc = root / "mustc" / "en-de"
    mustc.mkdir(parents=True)
    pq.write_table(pa.table(_mustc_rows(SENTENCES)), mustc / "tst.parquet")
    sqa = {"audio": [], "question": [], "answer": [], "duration": []}
    for i in range(3):
        wave = (0.1 * rng.standard_normal(8000 + 2000 * i)).astype(np.float32)
        sqa["audio"].append(_encoded(wave, "flac", f"q{i}.flac"))
        sqa["question"].append(f"what is number {i}?\n<audio>")
        sqa["answer"].append([f"number {i}", f"{i}"])
        sqa["duration"].append(len(wave) / SR)
    pq.write_table(pa.table(sqa), root / "spoken_squad_test.parquet")
    pq.write_table(pa.table(sqa), root / "spoken_squad_train.parquet")
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
    return config


def asr_config(root: Path, rows: dict, name: str = "asr.yml") -> Path:
    """An ASR-only config over `{root}/mustc/en-de/tst.parquet` holding `rows`."""
    (root / "mustc" / "en-de").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), root / "mustc" / "en-de" / "tst.parquet")
    config = root / name
    config.write_text(
        f"DATA:\n  - MuSTC:\n      datapath: {root / 'mustc'}\n      task: ASR\n      languages: [en-de]\n"
        "      partitions:\n        tst: {destination: test}\n"
    )
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    return tiny_checkpoint, write_test_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def asr_only(tmp_path_factory, tiny_checkpoint):
    """An ASR test set alone, and the checkpoint loaded once."""
    config = asr_config(tmp_path_factory.mktemp("asr"), _mustc_rows(SENTENCES))
    return load_pretrained_model(tiny_checkpoint), config, str(tiny_checkpoint)


STEMS = {"MuSTC_ASR_en-de_tst": 6, "MuSTC_ST_en-de_tst": 6, "Spoken_SQuAD_SQA_en_test": 3}
ARGS = ["--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]
ASR = "MuSTC_ASR_en-de_tst"


def _run(ckpt, config, results, *extra):
    return ev.main(
        ["--model-path", str(ckpt), "--dataset", str(config), "--results-dir", str(results), *ARGS, *extra]
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _evaluate(asr_only, results, config=None, **kwargs):
    (model, tok), default_config, ckpt = asr_only
    kwargs = {"settings": GenerationSettings(max_new_tokens=6), "batch_size": 4, "progress": False, **kwargs}
    kwargs.setdefault("model_path", ckpt)
    return ev.evaluate(model, tok, config or default_config, results, **kwargs)


def test_end_to_end_writes_predictions_scores_and_alignment(setup, tmp_path):
    ckpt, config = setup
    assert _run(ckpt, config, tmp_path, "--contrastive") == 0
    for stem, n in STEMS.items():
        preds = _lines(tmp_path / f"{stem}_preds.jsonl")
        assert len(preds) == n and len({p["id"] for p in preds}) == n
        scores = json.loads((tmp_path / f"{stem}_scores.json").read_text())
        assert scores["num_predictions"] == n and scores["num_failed"] == 0
        assert scores["prompt"]["prompt_format"] == "original"
    asr = _lines(tmp_path / f"{ASR}_preds.jsonl")
    assert [p["reference"] for p in asr] == [en for en, _ in SENTENCES]
    assert [p["id"].rsplit(":", 1)[1] for p in asr] == [str(i) for i in range(6)] and asr[0]["task"] == "ASR"
    st = _lines(tmp_path / "MuSTC_ST_en-de_tst_preds.jsonl")
    assert [p["reference"] for p in st] == [de for _, de in SENTENCES] and st[0]["source"] == SENTENCES[0][0]
    sqa = _lines(tmp_path / "Spoken_SQuAD_SQA_en_test_preds.jsonl")
    assert sqa[1]["references"] == ["number 1", "1"] and sqa[1]["reference"] == "number 1"

    # Scores are the metrics of what the files hold, by the task's metric families.
    asr_scores = json.loads((tmp_path / f"{ASR}_scores.json").read_text())
    expected = score(("asr",), [p["prediction"] for p in asr], [[p["reference"]] for p in asr])
    assert asr_scores["wer_paper"] == pytest.approx(expected["wer_paper"])
    assert asr_scores["wer_corpus"] == pytest.approx(expected["wer_corpus"])
    assert asr_scores["metrics"] == ["asr"] and asr_scores["skipped_at_load"] == {}
    assert "bleu_signature" in json.loads((tmp_path / "MuSTC_ST_en-de_tst_scores.json").read_text())
    sqa_scores = json.loads((tmp_path / "Spoken_SQuAD_SQA_en_test_scores.json").read_text())
    gold = score(("sqa",), [p["prediction"] for p in sqa], [p["references"] for p in sqa])
    assert sqa_scores["f1"] == pytest.approx(gold["f1"])

    # Alignment diagnostics for the WER-scored set only, one entry per layer of resolve_layers("all", 2).
    alignment = json.loads((tmp_path / f"{ASR}_alignment.json").read_text())
    assert sorted(alignment["layers"]) == ["0", "1", "2"]
    assert alignment["layers"]["0"]["num_pairs"] == 6
    assert (tmp_path / f"{ASR}_alignment.png").stat().st_size > 0
    assert not (tmp_path / "MuSTC_ST_en-de_tst_alignment.json").exists()


def test_killed_run_resumes_to_identical_files(asr_only, tmp_path, monkeypatch):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _evaluate(asr_only, full)

    real = runner.generate_batch
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(asr_only, resumed)
    monkeypatch.setattr(runner, "generate_batch", real)
    preds = resumed / f"{ASR}_preds.jsonl"
    text = preds.read_text()
    assert text.count("\n") == 4  # the first batch was written before the kill
    preds.write_text(text[: -len(text.splitlines()[-1]) // 2])  # the kill also cut the last line short
    assert not (resumed / f"{ASR}_scores.json").exists()

    _evaluate(asr_only, resumed)
    assert (resumed / f"{ASR}_preds.jsonl").read_text() == (full / f"{ASR}_preds.jsonl").read_text()
    assert json.loads((resumed / f"{ASR}_scores.json").read_text()) == json.loads(
        (full / f"{ASR}_scores.json").read_text()
    )


def test_limit_then_full_run_reuses_predictions(asr_only, tmp_path, monkeypatch):
    scores = _evaluate(asr_only, tmp_path, limit=2)
    assert scores[ASR]["num_predictions"] == 2 and len(_lines(tmp_path / f"{ASR}_preds.jsonl")) == 2
    generated = []
    real = runner.generate_batch
    monkeypatch.setattr(
        runner, "generate_batch", lambda m, t, b, *a: generated.extend(b["ids"]) or real(m, t, b, *a)
    )
    assert _evaluate(asr_only, tmp_path)[ASR]["num_predictions"] == 6
    assert sorted(i.rsplit(":", 1)[1] for i in generated) == ["2", "3", "4", "5"]
    assert len(_lines(tmp_path / f"{ASR}_preds.jsonl")) == 6


def test_resume_with_other_settings_is_refused(asr_only, tmp_path):
    _evaluate(asr_only, tmp_path, limit=1)
    newline = GenerationSettings(max_new_tokens=6, stop_at_newline=True)
    with pytest.raises(ValueError, match=r"changed: settings\.generation\.stop_at_newline.*--overwrite"):
        _evaluate(asr_only, tmp_path, limit=1, settings=newline)
    _evaluate(asr_only, tmp_path, limit=1, settings=newline, overwrite=True)


def test_resume_refuses_a_checkpoint_retrained_in_place(asr_only, tmp_path):
    (model, tok), config, ckpt = asr_only
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    _evaluate(asr_only, tmp_path / "res", limit=1, model_path=str(copy))
    retrained, _ = load_pretrained_model(copy)
    with torch.no_grad():
        next(retrained.projector.parameters()).add_(0.01)
    for p in retrained.projector.parameters():
        p.requires_grad_(True)  # what a training run saves
    save_trainable(retrained, copy)
    with pytest.raises(ValueError, match=r"changed: model\.trainable_weights"):
        _evaluate(asr_only, tmp_path / "res", model_path=str(copy))


def test_resume_refuses_other_references_under_the_same_ids(asr_only, tmp_path):
    first = asr_config(tmp_path / "a", _mustc_rows(SENTENCES))
    _evaluate(asr_only, tmp_path / "res", config=first)
    changed = [(en.upper() + " now", de) for en, de in SENTENCES]  # same file name, other transcripts
    second = asr_config(tmp_path / "b", _mustc_rows(changed))
    with pytest.raises(ValueError, match=r"changed: data\.files.*data\.references"):
        _evaluate(asr_only, tmp_path / "res", config=second)


@pytest.mark.parametrize("with_durations", [True, False])
def test_unreadable_audio_is_scored_empty_and_counted_once(asr_only, tmp_path, with_durations):
    rows = _mustc_rows(SENTENCES)
    rows["audio"][3] = {"bytes": b"not audio at all", "path": "broken.wav"}
    rows["sentence"][5] = "   "  # no reference: left out at load, and counted there
    if not with_durations:  # the audio headers are the only source of durations then
        del rows["duration"]
    config = asr_config(tmp_path / "data", rows)
    scores = _evaluate(asr_only, tmp_path / "res", config=config)[ASR]
    assert scores["num_predictions"] == 5 and scores["num_references"] == 5
    assert scores["num_failed"] == 1 and scores["failed"] == {"bad_audio": 1}
    assert scores["skipped_at_load"] == {"empty_text": 1}  # the failed decode is not counted again
    failed = [p for p in _lines(tmp_path / "res" / f"{ASR}_preds.jsonl") if p.get("failed")]
    assert len(failed) == 1 and failed[0]["failed"] == "bad_audio"
    assert failed[0]["prediction"] == "" and failed[0]["reference"] == SENTENCES[3][0]


def test_beam_search_predictions_do_not_depend_on_the_batch_size(asr_only, tmp_path):
    beams = GenerationSettings(max_new_tokens=6, num_beams=3, length_penalty=0.8)
    _evaluate(asr_only, tmp_path / "b1", settings=beams, batch_size=1)
    _evaluate(asr_only, tmp_path / "b4", settings=beams, batch_size=4)
    one = _lines(tmp_path / "b1" / f"{ASR}_preds.jsonl")
    assert one == _lines(tmp_path / "b4" / f"{ASR}_preds.jsonl")
    assert len({p["prediction"] for p in one}) > 1


def test_score_predictions_counts_and_references(tmp_path):
    records = {f"u{i}": {"id": f"u{i}", "prediction": "a", "reference": "a"} for i in range(3)}
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        ev.score_predictions(records, ["u0", "u1", "u2", "u3"], ("asr",))
    assert ev.score_predictions(records, ["u0", "u1", "u2"], ("asr",))["wer_corpus"] == 0.0
    records["u1"] = {"id": "u1", "prediction": "a"}
    with pytest.raises(ValueError, match=r"x_preds.jsonl: record 'u1' has no 'reference'"):
        ev.score_predictions(records, ["u0", "u1"], ("asr",), where="x_preds.jsonl: ")


def test_missing_test_file_is_named(setup, tmp_path):
    _, config = setup
    bad = tmp_path / "bad.yml"
    bad.write_text(
        config.read_text().replace("tst: {destination: test}", "tst-COMMON: {destination: test}", 1)
    )
    with pytest.raises(ConfigError, match="tst-COMMON.parquet"):
        ev.build_test_sets(bad)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt-format", "llava"], "--prompt_format 'llava'"),
        (["--system-prompt", "prompts/missing.txt"], "--system_prompt prompts/missing.txt"),
        (["--num-beams", "2", "--temperature", "0.5"], "--num-beams"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_fail_before_the_model_loads(setup, tmp_path, monkeypatch, extra, message):
    ckpt, config = setup
    monkeypatch.setattr(ev, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match=message):
        _run(ckpt, config, tmp_path, *extra)


def test_unwritable_results_dir_fails_before_the_model_loads(setup, tmp_path, monkeypatch):
    ckpt, config = setup
    monkeypatch.setattr(ev, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"--results-dir .*file/results: not a writable directory"):
        _run(ckpt, config, blocker / "results")

    def read_only(*args, **kwargs):  # what a read-only mount does (root ignores chmod)
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("llava.inference.predictions.tempfile.mkstemp", read_only)
    with pytest.raises(SystemExit, match="Read-only file system"):
        _run(ckpt, config, tmp_path / "ro")


FLAGS = ("--results-dir", "--stop-at-newline", "--num-beams", "--prompt-format", "--system-prompt")


def test_runs_as_a_script_from_anywhere(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "llava" / "eval" / "eval.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(flag in proc.stdout for flag in FLAGS)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # imported by this file
def test_runs_as_a_module(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["llava.eval.eval", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("llava.eval.eval", run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in FLAGS)
