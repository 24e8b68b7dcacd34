"""The synthetic corpus: grammar and translation rules, passages, espeak-ng speech, the tiny build."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from llava.demo.corpus import build as B
from llava.demo.corpus.espeak import EspeakUnavailableError, PhonemeEvent, WordEvent, espeak_available
from llava.demo.corpus.grammar import NounPhrase, generate_sentence, generate_sentences
from llava.demo.corpus.lexicon import ADJECTIVES, NOUNS, TIMES, english_vocabulary
from llava.demo.corpus.passages import generate_passages
from llava.demo.corpus.speech import token_starts, tokens_with_offsets

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng (pip install espeakng-loader) missing"
)


def _noun(en):
    return next(n for n in NOUNS if n.en == en)


def _adj(en):
    return next(a for a in ADJECTIVES if a.en == en)


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize(
    "np_, case, expected",
    [
        (NounPhrase(_noun("apple"), det="indef", adj=_adj("red")), "nom", "ein roter Apfel"),
        (NounPhrase(_noun("apple"), det="indef", adj=_adj("red")), "acc", "einen roten Apfel"),
        (NounPhrase(_noun("apple"), det="def", adj=_adj("red")), "acc", "den roten Apfel"),
        (NounPhrase(_noun("cup"), det="def", adj=_adj("blue")), "nom", "die blaue Tasse"),
        (NounPhrase(_noun("book"), det="indef", adj=_adj("new")), "acc", "ein neues Buch"),
        (NounPhrase(_noun("book"), det="def", adj=_adj("new")), "nom", "das neue Buch"),
        (
            NounPhrase(_noun("apple"), plural=True, det="num", number="three", adj=_adj("red")),
            "acc",
            "drei rote Äpfel",
        ),
        (NounPhrase(_noun("dog"), plural=True, det="def", adj=_adj("old")), "nom", "die alten Hunde"),
        (NounPhrase(_noun("mouse"), plural=True, det="some"), "acc", "einige Mäuse"),
    ],
)
def test_german_noun_phrase_agreement(np_, case, expected):
    assert np_.de(case) == expected


def test_english_noun_phrase_forms():
    assert NounPhrase(_noun("apple"), det="indef", adj=_adj("old")).en() == "an old apple"
    assert NounPhrase(_noun("apple"), det="indef", adj=_adj("red")).en() == "a red apple"
    assert NounPhrase(_noun("mouse"), plural=True, det="num", number="two").en() == "two mice"


def test_sentences_are_deterministic_distinct_and_in_vocabulary():
    a = generate_sentences(random.Random(3), 300)
    b = generate_sentences(random.Random(3), 300)
    assert a == b
    assert len({s.en for s in a}) == 300
    vocab = english_vocabulary()
    for s in a:
        assert s.en.endswith(".") and s.de.endswith(".") and s.en[0].isupper() and s.de[0].isupper()
        assert set(s.en.lower().strip(".").split()) <= vocab | {
            "there",
            "is",
            "are",
            "was",
            "were",
            "a",
            "an",
            "the",
            "some",
            "many",
        }
    assert 150 <= len(vocab) <= 600  # a vocabulary tiny models can learn


def test_time_adverb_keeps_german_verb_second():
    rng = random.Random(0)
    checked = 0
    for _ in range(400):
        s = generate_sentence(rng)
        time = next((t for t in TIMES if s.en.startswith(t.en[:1].upper() + t.en[1:] + " ")), None)
        if time is None:
            continue
        # German puts the adverb first too, so the finite verb (second) comes before the subject.
        assert s.de.startswith(time.de[:1].upper() + time.de[1:] + " ")
        checked += 1
    assert checked > 20


def test_passage_answers_are_spans_of_the_passage():
    passages = generate_passages(random.Random(1), 50)
    for p in passages:
        assert 3 <= p.context.count(".") <= 5
        for qa in p.qas:
            assert qa.question.endswith("?")
            assert qa.answer and qa.answer in p.context


def test_plan_keeps_held_out_text_out_of_training_and_lm_corpus():
    plan = B.plan_corpus("tiny", seed=5)
    held_out = {s.en for split in ("dev", "test") for s in plan.sentences[split]}
    held_out |= {p.context for split in ("dev", "test") for p in plan.passages[split]}
    assert not held_out & {s.en for s in plan.sentences["train"]}
    assert not held_out & set(B._lm_lines(plan))
    assert len(plan.jobs) == sum(B.SIZES["tiny"].asr) + sum(B.SIZES["tiny"].sqa)


# ----------------------------------------------------------------------------- word timing
def test_token_starts_share_out_merged_words_by_phonemes():
    text = "in the park"
    tokens = tokens_with_offsets(text)
    words = [WordEvent(0, 2, 0.10), WordEvent(7, 4, 0.50)]  # espeak-ng spoke "in the" as one unit
    phonemes = [PhonemeEvent(0, t, "x") for t in (0.10, 0.18, 0.26, 0.34)] + [PhonemeEvent(7, 0.5, "p")]
    starts, merged = token_starts(tokens, words, phonemes, lambda ws: [2] * len(ws), duration=1.0)
    assert merged == 1
    assert starts == [0.10, 0.26, 0.50]  # "the" starts at the unit's 3rd phoneme


def test_missing_espeak_names_the_package(monkeypatch):
    from llava.demo.corpus import espeak

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    with pytest.raises(EspeakUnavailableError, match="pip install espeakng-loader"):
        espeak._library_paths()


@needs_espeak
def test_speech_is_deterministic_with_word_boundaries():
    from llava.demo.corpus.speech import speak

    text = "There are two white clocks in the garden."
    a = speak(text, "en-us+f2", 160, 50, seed=7)
    speak("Something else entirely.", "en+m1", 140, 40, seed=1)  # state from other calls must not leak
    b = speak(text, "en-us+f2", 160, 50, seed=7)
    assert a.sampling_rate == 16000 and a.audio.dtype == np.float32
    assert np.array_equal(a.audio, b.audio) and a.word_boundaries == b.word_boundaries
    assert 1.0 < a.duration < 5.0
    assert [w for _, _, w in a.word_boundaries] == text.split()
    _check_boundaries(a.word_boundaries, a.duration)


def _check_boundaries(bounds, duration):
    prev_end = 0.0
    for start, end, _ in bounds:
        assert 0.0 <= start < end <= duration + 1e-6
        assert start >= prev_end - 1e-6
        prev_end = end


# ----------------------------------------------------------------------------- the tiny build
@pytest.fixture(scope="module")
def tiny_corpora(tmp_path_factory):
    if not espeak_available():
        pytest.skip("espeak-ng (pip install espeakng-loader) missing")
    a = tmp_path_factory.mktemp("synth_a")
    b = tmp_path_factory.mktemp("synth_b")
    manifest = B.build_corpus(a, size="tiny", seed=11, workers=1)
    B.build_corpus(b, size="tiny", seed=11, workers=2)
    return a, b, manifest


def test_tiny_build_is_deterministic(tiny_corpora):
    a, b, manifest = tiny_corpora
    assert manifest["files"]
    for rel in manifest["files"]:
        if rel.startswith("configs/"):
            continue  # they name their own directory
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_tiny_build_layout_and_columns(tiny_corpora):
    root, _, manifest = tiny_corpora
    spec = B.SIZES["tiny"]
    for split, n in zip(B.SPLITS, spec.asr):
        mustc = pq.read_table(root / "MUSTC" / "en-de" / f"{split}.parquet")
        assert mustc.column_names == ["audio", "sentence", "translation", "duration"] and mustc.num_rows == n
        nwp = pq.read_table(root / "NWP" / f"en-de_{split}_processed.parquet")
        assert set(nwp.column_names) == {
            "audio",
            "transcription",
            "word_boundaries",
            "source_language",
            "target_language",
            "task",
            "duration",
        }
        assert nwp.column("transcription").to_pylist() == mustc.column("sentence").to_pylist()
        sqa = pq.read_table(root / "SpokenSQuAD" / f"spoken_squad_{split}.parquet")
        assert {"audio", "question", "answer", "duration", "context"} <= set(sqa.column_names)
        assert all(q.endswith("?\n<audio>") for q in sqa.column("question").to_pylist())
        for ans, ctx in zip(sqa.column("answer").to_pylist(), sqa.column("context").to_pylist()):
            assert ans in ctx
    assert (root / "text" / "lm_corpus.txt").read_text().count("\n") == manifest["lm_corpus_lines"]
    for name in ("pretrain_asr", "pretrain_mixed", "finetune_mixed", "eval_asr", "eval_st", "eval_sqa"):
        config = yaml.safe_load((root / "configs" / f"{name}.yml").read_text())
        for entry in config["DATA"]:
            ((_, body),) = entry.items()
            assert (root / body["datapath"]).is_dir()


def test_tiny_build_audio_and_word_boundaries(tiny_corpora):
    import io

    import soundfile as sf

    root, _, _ = tiny_corpora
    nwp = pq.read_table(root / "NWP" / "en-de_train_processed.parquet").to_pylist()
    for row in nwp:
        wave, sr = sf.read(io.BytesIO(row["audio"]["bytes"]))
        assert sr == 16000 and abs(len(wave) / sr - row["duration"]) < 1e-3
        assert 0.5 < row["duration"] < 6.0
        bounds = json.loads(row["word_boundaries"])
        assert [w for _, _, w in bounds] == row["transcription"].split()
        _check_boundaries(bounds, row["duration"])


def test_rebuild_with_same_arguments_is_a_no_op(tiny_corpora):
    root, _, manifest = tiny_corpora
    stamps = {rel: (root / rel).stat().st_mtime_ns for rel in manifest["files"]}
    again = B.build_corpus(root, size="tiny", seed=11)
    assert again == manifest
    assert stamps == {rel: (root / rel).stat().st_mtime_ns for rel in manifest["files"]}


def test_tiny_build_lm_tasks_hold_training_texts_only(tiny_corpora):
    root, _, manifest = tiny_corpora
    assert "text/lm_tasks.jsonl" in manifest["files"]
    records = [json.loads(line) for line in (root / "text" / "lm_tasks.jsonl").read_text().splitlines()]
    spec = B.SIZES["tiny"]
    pairs = [r for r in records if r["kind"] == "pair"]
    passages = [r for r in records if r["kind"] == "passage"]
    assert len(pairs) == spec.asr[0] + spec.lm_extra_sentences
    assert len(passages) == spec.sqa[0] + spec.lm_extra_passages
    for p in passages:
        assert p["qas"] and all(answer in p["context"] for _, answer in p["qas"])
    # The same texts as the plain LM corpus, and none of the held-out ones.
    lines = set((root / "text" / "lm_corpus.txt").read_text().splitlines())
    assert {r["en"] for r in pairs} | {r["de"] for r in pairs} | {p["context"] for p in passages} <= lines
    train = pq.read_table(root / "MUSTC" / "en-de" / "train.parquet").column("sentence").to_pylist()
    assert [r["en"] for r in pairs[: len(train)]] == train
    held_out = set()
    for split in ("dev", "test"):
        held_out |= set(
            pq.read_table(root / "MUSTC" / "en-de" / f"{split}.parquet").column("sentence").to_pylist()
        )
        held_out |= set(
            pq.read_table(root / "SpokenSQuAD" / f"spoken_squad_{split}.parquet")
            .column("context")
            .to_pylist()
        )
    assert not held_out & ({r["en"] for r in pairs} | {p["context"] for p in passages})
