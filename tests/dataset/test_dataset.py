from __future__ import annotations

import io
import json
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from llava.dataset.audio import encode_audio
from llava.dataset.collator import SpeechCollator
from llava.dataset.config import ConfigError
from llava.dataset.dataset import SpeechDataset
from llava.dataset.importers import write_parquet
from llava.dataset.interleave import InterleaveOptions
from llava.dataset.prompts import PromptBank
from llava.dataset.sampler import DurationBatchSampler
from llava.dataset.skips import DataError
from llava.tokenization import add_audio_token

SR = 16000


def _tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _nan_wav(seconds: float) -> dict:
    """A float WAV whose header is fine but whose samples are NaN: only decoding finds out."""
    wave = np.full(int(seconds * SR), np.nan, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="FLOAT")
    return {"bytes": buf.getvalue(), "path": None}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """MuSTC en-de (20 rows, one with NaN audio) + Spoken-SQuAD (10 rows) + a config mixing them."""
    rows = []
    for i in range(20):
        d = 0.3 + 0.05 * i
        words = [f"w{j}" for j in range(12)]
        wb = [[j * d / 12, (j + 1) * d / 12, w] for j, w in enumerate(words)]
        rows.append(
            {
                "audio": encode_audio(_tone(d), SR),
                "sentence": " ".join(words),
                "translation": f"satz {i}",
                "duration": d,
                "word_boundaries": json.dumps(wb),
            }
        )
    rows[7]["audio"] = _nan_wav(0.65)
    (tmp_path / "mustc" / "en-de").mkdir(parents=True)
    write_parquet(rows, tmp_path / "mustc" / "en-de" / "train.parquet")
    write_parquet(rows[:6], tmp_path / "mustc" / "en-de" / "dev.parquet")
    sqa = [
        {
            "audio": encode_audio(_tone(0.5), SR),
            "question": f"q{i}?\n<audio>",
            "answer": f"a{i}",
            "duration": 0.5,
        }
        for i in range(10)
    ]
    write_parquet(sqa, tmp_path / "sqa" / "spoken_squad_train.parquet")
    (tmp_path / "data.yml").write_text(
        textwrap.dedent(
            f"""
            DATA:
              - MuSTC:
                  datapath: {tmp_path / "mustc"}
                  task: ST
                  languages: [en-de]
                  partitions:
                    train: {{amount: ":100%", destination: train, weight: 1.0}}
                    dev: {{destination: eval}}
              - Spoken_SQuAD:
                  datapath: {tmp_path / "sqa"}
                  task: SQA
                  partitions:
                    train: {{amount: ":100%", destination: train, weight: 2.5, max_duration: 10}}
            """
        )
    )
    return tmp_path / "data.yml"


def _by_source(ds: SpeechDataset) -> Counter:
    return Counter(ds.sources[int(s)].spec.dataset_type for s in ds.index[:, 0])


def test_weighted_mixing_and_durations(corpus):
    ds = SpeechDataset.from_config(corpus, "train", seed=1)
    assert _by_source(ds) == {"MuSTC": 20, "Spoken_SQuAD": 25}
    assert len(ds) == len(ds.durations) == 45
    # weight 2.5: every SQA row twice, and a seeded half of them a third time
    sqa_rows = Counter(int(k) for s, k in ds.index if ds.sources[int(s)].task == "SQA")
    assert sorted(Counter(sqa_rows.values()).items()) == [(2, 5), (3, 5)]
    again = SpeechDataset.from_config(corpus, "train", seed=1)
    assert np.array_equal(ds.index, again.index)


def test_data_subset_is_seeded_and_per_source(corpus):
    a = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=3)
    b = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=3)
    c = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=4)
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.index, c.index)
    assert _by_source(a) == {"MuSTC": 10, "Spoken_SQuAD": 12}  # 5 rows x weight 2.5 (rounded)
    with pytest.raises(ValueError, match="data_subset"):
        SpeechDataset.from_config(corpus, "train", data_subset=1.5)


def test_eval_destination_fixed_prompt_no_weights(corpus):
    ds = SpeechDataset.from_config(corpus, "eval")
    assert len(ds) == 6 and not ds.train
    first = PromptBank.load().instructions("ST", source_language="en", target_language="de")[0]
    assert {ds[i].prompt for i in range(len(ds))} == {f"<audio>\n{first}"}  # the paper's layout
    with pytest.raises(ConfigError, match="no partition has destination 'test'"):
        SpeechDataset.from_config(corpus, "test")


def test_training_prompts_seeded_per_sample_and_epoch(corpus):
    ds = SpeechDataset.from_config(corpus, "train", seed=5, prompt_format="instruction_first")
    mustc = [i for i in range(len(ds)) if ds.task_name(i) == "ST" and i != 7]
    first = [ds[i]["prompt"] for i in mustc]
    assert first == [ds[i]["prompt"] for i in mustc]
    assert len(set(first)) > 1
    ds.set_epoch(1)
    assert [ds[i]["prompt"] for i in mustc] != first
    sqa = next(i for i in range(len(ds)) if ds.task_name(i) == "SQA")
    assert ds[sqa]["prompt"].endswith("?\n<audio>")  # question used as the prompt


def test_decode_failure_returns_none_and_counts(corpus, tiny_tokenizer):
    ds = SpeechDataset.from_config(corpus, "train")
    assert ds[7] is None
    assert ds.skips.as_dict() == {"non_finite_audio": 1}
    assert "non_finite_audio=1" in ds.summary()
    strict = SpeechDataset.from_config(corpus, "train", strict=True)
    with pytest.raises(DataError, match=r"train\.parquet: row MuSTC.ST.en-de:train:7: non_finite_audio"):
        strict[7]


def test_interleaved_samples_have_segments(corpus):
    ds = SpeechDataset.from_config(corpus, "eval", interleave_options=InterleaveOptions(seed=0))
    s = ds[3]
    kinds = [k for k, _ in s["segments"]]
    assert set(kinds) <= {"text", "audio"} and all(a != b for a, b in zip(kinds, kinds[1:]))
    text_words = " ".join(v for k, v in s["segments"] if k == "text").split()
    assert set(text_words) <= set(s["transcript"].split())
    # sources without word boundaries cannot be interleaved: a clean, counted skip
    ds = SpeechDataset.from_config(corpus, "train", interleave_options=InterleaveOptions())
    assert ds.skips.as_dict()["missing_column"] == 10


def test_empty_dataset_is_an_error(corpus):
    text = corpus.read_text().replace("weight: 2.5, max_duration: 10", "weight: 2.5, max_duration: 0.1")
    text = text.replace(
        'train: {amount: ":100%", destination: train, weight: 1.0}', "train: {destination: eval}"
    )
    corpus.write_text(text)
    with pytest.raises(DataError, match="no usable train samples; skipped 10 of 10 samples: too_long=10"):
        SpeechDataset.from_config(corpus, "train")


def test_dataloader_end_to_end(corpus, tiny_tokenizer):
    add_audio_token(tiny_tokenizer)
    ds = SpeechDataset.from_config(corpus, "train")
    sampler = DurationBatchSampler(ds.durations, max_batch_seconds=4.0, seed=0)
    collator = SpeechCollator(tiny_tokenizer, lambda n: max(1, n // 1600), with_transcript=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collator)
    rows, skipped = 0, Counter()
    for batch in loader:
        rows += batch["input_ids"].shape[0]
        skipped.update(batch.pop("skipped"))
        assert batch["audio_values"].shape[0] == batch["input_ids"].shape[0]
    assert rows == len(ds) - 1 and skipped == {"bad_audio": 1}
