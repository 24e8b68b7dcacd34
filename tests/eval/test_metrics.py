import random
import re
import sys
import types
import unicodedata

import jiwer
import pytest
import sacrebleu

from llava.eval.metrics import (
    METRICS,
    MetricUnavailable,
    asr_scores,
    comet_scores,
    get_metric,
    normalize_for_squad,
    normalize_for_wer,
    normalize_paper_wer,
    score,
    squad_scores,
    st_scores,
    wer_paper,
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
    assert out["wer_corpus"] == pytest.approx(100 * 3 / 9)
    assert out["wer_paper"] == pytest.approx(100 * (2 / 6 + 0 + 1) / 3)
    assert out["num_utterances"] == 3 and out["num_empty_refs"] == 0
    assert out["num_over_100"] == 0  # "yes yes" is exactly 100 %, not over


def test_asr_counts_replies_that_run_on():
    refs = ["Karl works in Lisbon.", "The cat sat.", "Tom reads."]
    hyps = ["Karl works as a driver in Lisbon and keeps a bed", "the cat sat", "a b c"]
    out = asr_scores(hyps, refs)
    # utt 1: 4 reference words, 7 inserted -> 175 %; utt 3: 2 substitutions + 1 insertion -> 150 %.
    assert out["num_over_100"] == 2
    assert out["wer_paper"] == pytest.approx(100 * (7 / 4 + 0 + 3 / 2) / 3)


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
    assert out["wer_corpus"] == pytest.approx(100 * jiwer.wer(norm_refs, norm_hyps))


def test_asr_empty_references():
    out = asr_scores(["", "x y", "a b"], ["...", "", "a b"])
    # Empty refs: 0 if the hypothesis is empty too, else 100; kept in the mean and counted.
    assert out["num_empty_refs"] == 2
    assert out["wer_paper"] == pytest.approx((0 + 100 + 0) / 3)
    assert out["wer_corpus"] == pytest.approx(100 * 2 / 2)  # two insertions over two reference words
    assert asr_scores([""], [""])["wer_corpus"] == 0.0
    assert asr_scores(["x"], [""])["wer_corpus"] == 100.0


# An independent implementation of the original's WER: its normalisation written out by hand (every
# Unicode punctuation character deleted), a textbook word-level Levenshtein, the mean over utterances.
def _reference_paper_normalise(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\s\s+", " ", text.strip())
    return [w for w in text.strip().split(" ") if w]


def _levenshtein(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _reference_wer_paper(hyps: list[str], refs: list[str]) -> float:
    per_utt = []
    for h, r in zip(hyps, refs):
        rw, hw = _reference_paper_normalise(r), _reference_paper_normalise(h)
        per_utt.append(_levenshtein(rw, hw) / len(rw) if rw else float(bool(hw)))
    return 100 * sum(per_utt) / len(per_utt)


PUNCTUATED_REFS = [
    "Don't stop: it's a well-known fact.",
    "The state-of-the-art model (v2) works -- mostly!",
    "\u201cQuoted,\u201d she said; \u2018fine\u2019\u2026",
    "E-mail me at 5 o'clock, O.K.?",
    "Rock 'n' roll isn't dead.",
    "...",
]
PUNCTUATED_HYPS = [
    "dont stop its a well known fact",
    "the stateoftheart model v2 works mostly",
    "quoted she said fine",
    "email me at five oclock ok",
    "rock n roll is not dead",
    "",
]


def test_wer_paper_matches_an_independent_computation():
    assert normalize_paper_wer("Don't  STOP, well-known! ") == "dont stop wellknown"
    assert normalize_paper_wer("\u00bfQu\u00e9?  50% \u2014 ok") == "qu\u00e9 50 ok"
    expected = _reference_wer_paper(PUNCTUATED_HYPS, PUNCTUATED_REFS)
    assert wer_paper(PUNCTUATED_HYPS, PUNCTUATED_REFS) == pytest.approx(expected)
    out = asr_scores(PUNCTUATED_HYPS, PUNCTUATED_REFS)
    assert out["wer_paper"] == pytest.approx(expected)
    # The two WERs differ on in-word punctuation: "well known" is 2 words here, "wellknown" one there.
    assert out["wer_corpus"] != pytest.approx(out["wer_paper"])
    # Hand-computed: utterance 1 has one substitution ("well" for "wellknown") and one insertion.
    assert wer_paper(["dont stop its a well known fact"], [PUNCTUATED_REFS[0]]) == pytest.approx(100 * 2 / 6)
    rng = random.Random(0)
    words = "a the cat sat on mat don't well-known e.g. stop".split()
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(40)]
    hyps = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(40)]
    assert wer_paper(hyps, refs) == pytest.approx(_reference_wer_paper(hyps, refs))


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
    assert set(METRICS) == {"asr", "st", "sqa", "classification", "regression"}
    assert score(("asr",), ["a b"], [["a c"]]) == asr_scores(["a b"], ["a c"])
    assert score(("sqa",), ["x"], [["y", "x"]])["exact_match"] == 100.0
    both = score(("asr", "st"), ST_HYPS, [[r] for r in ST_REFS])  # META's families
    assert both["bleu"] == pytest.approx(st_scores(ST_HYPS, ST_REFS)["bleu"])
    assert both["wer_paper"] == pytest.approx(wer_paper(ST_HYPS, ST_REFS))
    with pytest.raises(KeyError, match=r"unknown metric 'cls'.*'asr', 'st', 'sqa'"):
        score(("cls",), ["a"], [["a"]])
    with pytest.raises(KeyError, match="known metrics"):
        get_metric("ASR")
    with pytest.raises(TypeError, match="sequence of names"):
        score("asr", ["a"], [["a"]])
    for name, refs in (("asr", [["a"], ["b"]]), ("st", [["a"], ["b"]]), ("sqa", [["a"], ["b"]])):
        with pytest.raises(ValueError, match="1 predictions for 2 references"):
            score((name,), ["a"], refs)
        with pytest.raises(ValueError, match="1 predictions for 2 references"):
            METRICS[name].score(["a"], refs)
    with pytest.raises(ValueError, match="nothing to score"):
        score(("asr",), [], [])
    with pytest.raises(ValueError, match="no reference"):
        score(("asr",), ["a"], [[]])


def test_st_family_passes_sources_to_comet(monkeypatch):
    seen = {}

    def fake_comet(srcs, hyps, refs, model):
        seen.update(srcs=srcs, model=model)
        return {"comet": 50.0, "comet_model": model}

    monkeypatch.setattr("llava.eval.metrics.comet_scores", fake_comet)
    out = score(("st",), ["a"], [["b"]], sources=["src"], comet_model="m")
    assert out["comet"] == 50.0 and seen == {"srcs": ["src"], "model": "m"}
    assert "comet" not in score(("st",), ["a"], [["b"]], sources=["src"])
