"""Speaker-attribute tasks from the synthetic corpus: labels recovered from the corpus plan, checked
against the audio itself (pitch), same utterances in the same order, loadable configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from llava.dataset.audio import decode_audio
from llava.dataset.config import load_data_config
from llava.dataset.dataset import SpeechDataset
from llava.demo.corpus.attributes import build_attributes, main, rate_bucket, voice_gender
from llava.demo.corpus.build import VOICES
from llava.train.eval_sets import eval_set_names


@pytest.fixture(scope="module")
def attributes(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("attributes")
    return out, build_attributes(tiny_corpus, out)


def test_voice_gender_and_rate_buckets():
    genders = [voice_gender(v) for v in VOICES]
    assert genders.count("female") == genders.count("male") == 5
    assert voice_gender("en-us") == "male" and voice_gender("en-gb-x-rp+f4") == "female"
    assert [rate_bucket(r) for r in (130, 148, 149, 166, 167, 185)] == [
        "slow",
        "slow",
        "medium",
        "medium",
        "fast",
        "fast",
    ]
    with pytest.raises(ValueError, match="186 wpm lies outside"):
        rate_bucket(186)


def _f0(wave: np.ndarray, sr: int = 16000) -> float:
    """Median fundamental frequency of the voiced frames (autocorrelation peak in 70-400 Hz)."""
    values = []
    for start in range(0, len(wave) - 1024, 800):
        w = wave[start : start + 1024] - wave[start : start + 1024].mean()
        if np.abs(w).mean() < 0.02:
            continue
        ac = np.correlate(w, w, "full")[1023:]
        lo, hi = sr // 400, sr // 70
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.3 * ac[0]:
            values.append(sr / k)
    return float(np.median(values)) if values else float("nan")


def test_files_keep_the_corpus_utterances_and_labels_match_the_audio(attributes, tiny_corpus):
    out, summary = attributes
    for split in ("train", "dev", "test"):
        mustc = pq.read_table(tiny_corpus / "MUSTC" / "en-de" / f"{split}.parquet").to_pylist()
        gender = pq.read_table(out / "ATTRIBUTES" / f"gender_{split}.parquet").to_pylist()
        rate = pq.read_table(out / "ATTRIBUTES" / f"rate_{split}.parquet").to_pylist()
        assert len(gender) == len(rate) == len(mustc) == summary["counts"][split]["rows"]
        # row i is the same audio everywhere (so one feature cache entry serves every task)
        assert all(g["audio"] == m["audio"] == r["audio"] for g, r, m in zip(gender, rate, mustc))
        assert all(r["label"] == rate_bucket(int(r["value"])) and 130 <= r["value"] <= 185 for r in rate)
        assert all(g["label"] == voice_gender(g["voice"]) for g in gender)
    # Independent of the plan: female voices are pitched about an octave above male ones.
    rows = pq.read_table(out / "ATTRIBUTES" / "gender_train.parquet").to_pylist()[:24]
    f0 = {"female": [], "male": []}
    for row in rows:
        f0[row["label"]].append(_f0(decode_audio(row["audio"], 16000)))
    assert np.nanmedian(f0["female"]) > 1.5 * np.nanmedian(f0["male"])
    # Faster speech: fewer seconds per word.
    rate = pq.read_table(out / "ATTRIBUTES" / "rate_train.parquet").to_pylist()
    mustc = pq.read_table(tiny_corpus / "MUSTC" / "en-de" / "train.parquet").to_pylist()
    per_word = [r["duration"] / len(m["sentence"].split()) for r, m in zip(rate, mustc)]
    assert np.corrcoef([r["value"] for r in rate], per_word)[0, 1] < -0.3


def test_configs_load_and_name_their_validation_sets(attributes):
    out, _ = attributes
    cfg = load_data_config(out / "configs" / "attributes_all.yml")
    names = list(dict.fromkeys(eval_set_names(cfg.for_destination("eval"))))
    assert names == ["gender", "rate", "rate_wpm", "asr", "st", "sqa"]
    tasks = {s.task for s in cfg.for_destination("train")}
    assert tasks == {"CLS", "REG", "ASR", "ST", "SQA"}
    ds = SpeechDataset.from_config(out / "configs" / "eval_attributes.yml", "test")
    by_task = {ds.task_name(i): ds[i] for i in range(len(ds))}
    assert by_task["REG"].target == str(int(float(by_task["REG"].target)))  # "150", not "150.0"
    assert "words per minute" in by_task["REG"].prompt and by_task["CLS"].target in {
        "female",
        "male",
        "slow",
        "medium",
        "fast",
    }
    cls = SpeechDataset.from_config(out / "configs" / "attributes_cls.yml", "train")
    assert {cls.task_name(i) for i in range(len(cls))} == {"CLS"}


def test_a_corpus_that_does_not_match_its_plan_is_refused(tiny_corpus, tmp_path, capsys):
    fake = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / "MUSTC", fake / "MUSTC")
    manifest = json.loads((tiny_corpus / "manifest.json").read_text())
    manifest["seed"] += 1
    (fake / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--corpus", str(fake)]) == 2
    assert "is not the utterance the corpus plan has for it" in capsys.readouterr().err
    assert main(["--corpus", str(tmp_path / "none")]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err
