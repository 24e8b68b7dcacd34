import sys
import types

import jiwer
import pytest
import sacrebleu

from llava.eval.metrics import (
    SCORERS,
    MetricUnavailable,
    asr_scores,
    comet_scores,
    normalize_for_squad,
    normalize_for_wer,
    score,
    squad_scores,
    st_scores,
)


# ------------------------------------------------------------------------------------------ ASR
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello,   World!", "hello world"),
        ("Don\u2019t STOP\u2014the \u2018music\u2019!", "don't stop the music"),
        ("rock 'n' roll", "rock n roll"),
        ("well-known", "well known"),
        ("\u00bfQu\u00e9 pasa?", "qu\u00e9 pasa"),
        ("\uff26\uff55\uff4c\uff4c width", "full width"),
        ("50% of $3 + 2€", "50 of $3 + 2€"),  # % is Unicode punctuation (Po); $ + € are symbols
        ("  \t\n", ""),
    ],
)
def test_normalize_for_wer(raw, expected):
    assert normalize_for_wer(raw) == expected


def test_asr_hand_computed():
    refs = ["The cat sat on the mat.", "Hello, world!", "Yes"]
    hyps = ["the cat sit on mat", "HELLO WORLD", "yes yes"]
    out = asr_scores(hyps, refs)
    # utt 1: sat->sit (S), "the" dropped (D) over 6 words; utt 2: exact; utt 3: one insertion.
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 1, 1)
    assert out["ref_words"] == 9 and out["hits"] == 7
    assert out["wer"] == pytest.approx(100 * 3 / 9)
    assert out["wer_utt_mean"] == pytest.approx(100 * (2 / 6 + 0 + 1) / 3)
    assert out["num_utterances"] == 3 and out["num_empty_refs"] == 0


def test_asr_matches_jiwer_and_manual_loop():
    refs = [
        "It was the best of times, it was the worst of times.",
        "Call me Ishmael.",
        "A screaming comes across the sky!",
        "Happy families are all alike; every unhappy family is unhappy in its own way.",
    ]
    hyps = [
        "it was the best of time it was worst of times",
        "call me ishmael please now",
        "",
        "happy families are alike every unhappy family is unhappy in its own way",
    ]
    out = asr_scores(hyps, refs)
    norm_refs = [normalize_for_wer(r) for r in refs]
    norm_hyps = [normalize_for_wer(h) for h in hyps]
    assert out["wer"] == pytest.approx(100 * jiwer.wer(norm_refs, norm_hyps))
    per_utt = [jiwer.wer(r, h) for r, h in zip(norm_refs, norm_hyps)]
    assert out["wer_utt_mean"] == pytest.approx(100 * sum(per_utt) / len(per_utt))


def test_asr_empty_references():
    out = asr_scores(["", "x y", "a b"], ["...", "", "a b"])
    # Empty refs: 0 if the hypothesis is empty too, else 100; kept in the mean and counted.
    assert out["num_empty_refs"] == 2
    assert out["wer_utt_mean"] == pytest.approx((0 + 100 + 0) / 3)
    assert out["wer"] == pytest.approx(100 * 2 / 2)  # two insertions over two reference words
    assert asr_scores([""], [""])["wer"] == 0.0
    assert asr_scores(["x"], [""])["wer"] == 100.0


# ------------------------------------------------------------------------------------------- ST
ST_REFS = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Ich habe heute keine Zeit.",
    "Das Wetter ist schön, oder?",
]
ST_HYPS = [
    "Der schnelle Fuchs springt über den faulen Hund.",
    "Ich habe keine Zeit heute.",
    "das Wetter ist schön oder?",
]


def test_st_matches_sacrebleu():
    out = st_scores(ST_HYPS, ST_REFS)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ST_HYPS, [ST_REFS]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(ST_HYPS, [ST_REFS]).score)
    assert "tok:13a" in out["bleu_signature"] and "case:mixed" in out["bleu_signature"]
    assert "chrF2" in out["chrf_signature"] or "nc:6" in out["chrf_signature"]
    assert out["num_segments"] == 3 and "comet" not in out
    # Cased: changing only case lowers BLEU.
    assert st_scores([h.upper() for h in ST_REFS], ST_REFS)["bleu"] < 100.0
    assert st_scores(ST_REFS, ST_REFS)["bleu"] == pytest.approx(100.0)


def test_comet_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "comet", None)  # makes `import comet` fail
    with pytest.raises(MetricUnavailable, match="unbabel-comet"):
        comet_scores(["a"], ["b"], ["c"])
    out = st_scores(ST_HYPS, ST_REFS, srcs=["s"] * 3, comet_model="Unbabel/wmt22-comet-da")
    assert out["comet"] is None and "unbabel-comet" in out["comet_error"]
    assert out["bleu"] > 0
    with pytest.raises(ValueError, match="srcs"):
        st_scores(ST_HYPS, ST_REFS, comet_model="Unbabel/wmt22-comet-da")


def test_comet_model_unavailable(monkeypatch, tmp_path):
    fake = types.ModuleType("comet")

    def download_model(name):
        raise OSError("offline")

    fake.download_model = download_model
    monkeypatch.setitem(sys.modules, "comet", fake)
    with pytest.raises(MetricUnavailable, match="'no/such-model' is not available"):
        comet_scores(["a"], ["b"], ["c"], model="no/such-model")
    with pytest.raises(MetricUnavailable, match="checkpoints/model.ckpt"):
        comet_scores(["a"], ["b"], ["c"], model=str(tmp_path))


# ------------------------------------------------------------------------------------------ SQA
def test_squad_normalisation():
    assert normalize_for_squad("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_for_squad("an apple, a pear") == "apple pear"
    assert normalize_for_squad("Theatre") == "theatre"  # articles only as whole words


def test_squad_hand_computed():
    preds = ["The Eiffel Tower!", "in Paris, France", "1887", "an apple pie"]
    golds = [
        ["eiffel tower"],
        ["Paris"],
        ["in 1889", "1887 to 1889", "1887"],
        ["apple tart", "the pie"],
    ]
    out = squad_scores(preds, golds)
    # F1 per item: 1; P=1/3,R=1 -> 0.5; exact -> 1; max(P=R=1/2 -> 0.5, P=1/2,R=1 -> 2/3).
    assert out["exact_match"] == pytest.approx(100 * 2 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 0.5 + 1 + 2 / 3) / 4)
    assert out["num_questions"] == 4
    # A bare string is one gold answer.
    assert squad_scores(["Paris"], ["paris."])["exact_match"] == 100.0
    with pytest.raises(ValueError, match="no gold answer"):
        squad_scores(["x"], [[]])


# ------------------------------------------------------------------------------------- registry
def test_registry_and_errors():
    assert set(SCORERS) == {"ASR", "ST", "SQA"}
    assert score("ASR", ["a b"], ["a c"]) == asr_scores(["a b"], ["a c"])
    assert score("SQA", ["x"], [["x"]])["exact_match"] == 100.0
    with pytest.raises(ValueError, match=r"unknown task 'MT'.*'ASR'.*'SQA'.*'ST'"):
        score("MT", ["a"], ["a"])
    for task, refs in (("ASR", ["a", "b"]), ("ST", ["a", "b"]), ("SQA", [["a"], ["b"]])):
        with pytest.raises(ValueError, match="1 predictions for 2 references"):
            score(task, ["a"], refs)
        with pytest.raises(ValueError, match="1 predictions for 2 references"):
            SCORERS[task](["a"], refs)
    with pytest.raises(ValueError, match="nothing to score"):
        score("ASR", [], [])
