"""The spelled copy of the ASR pretraining data: same audio and rows, transcripts letter by letter,
a data config the dataset reads, written once."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from llava.dataset.dataset import SpeechDataset
from llava.demo.corpus.spelled import spell, write_spelled_asr


def test_spell_writes_letters_and_word_separators():
    assert spell("The cat's 2 hats.") == "t h e | c a t | s | h a t s"
    assert spell("Anna") == "a n n a"  # no letter doubled, whatever the rng


def test_spelled_copy_keeps_audio_and_rows(tmp_path, tiny_corpus):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    config = write_spelled_asr(corpus)
    for stem in ("train", "dev"):
        words = pq.read_table(corpus / "MUSTC" / "en-de" / f"{stem}.parquet")
        letters = pq.read_table(corpus / "MUSTC_spelled" / "en-de" / f"{stem}.parquet")
        assert letters.num_rows == words.num_rows
        assert letters["audio"].to_pylist() == words["audio"].to_pylist()
        assert letters["sentence"].to_pylist() == [spell(s) for s in words["sentence"].to_pylist()]
    sample = SpeechDataset.from_config(config, "train", seed=0)[0]
    assert set(sample.transcript) <= set("abcdefghijklmnopqrstuvwxyz |")
    # Written once: a second call keeps the files as they are.
    stamp = (corpus / "MUSTC_spelled" / "en-de" / "train.parquet").stat().st_mtime_ns
    assert write_spelled_asr(corpus) == config
    assert (corpus / "MUSTC_spelled" / "en-de" / "train.parquet").stat().st_mtime_ns == stamp


def test_missing_corpus_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="MUSTC/en-de/train.parquet: not found"):
        write_spelled_asr(tmp_path)
