"""Closed-ended scoring: label matching, accuracy / macro-F1 against hand-computed values, MAE, and the
unparseable answers counted and named."""

from __future__ import annotations

import logging

import pytest

from llava.eval.closed import (
    MAX_LISTED,
    classification_scores,
    match_label,
    normalize_label,
    parse_number,
    regression_scores,
)
from llava.eval.metrics import METRICS, score


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        ("female", ("female", None)),
        ("Female.", ("female", None)),
        ("  The speaker is FEMALE!", ("female", None)),
        ("male", ("male", None)),  # "male" is not read inside "female" nor the reverse
        ("It's a male voice", ("male", None)),
        ("very fast", ("very fast", None)),  # the longer label wins over the "fast" inside it
        ("the speech is fast", ("fast", None)),
        ("male or female", (None, "ambiguous")),
        ("a child", (None, "out_of_label")),
        (" ... ", (None, "empty")),
    ],
)
def test_match_label(answer, want):
    labels = ["fast", "female", "male", "very fast"]
    assert match_label(answer, labels) == want


def test_normalize_label():
    assert normalize_label("The Speaker’s  voice—low.") == "speaker's voice low"
    assert normalize_label("An adult") == "adult"


def test_classification_against_a_hand_computed_confusion_matrix():
    gold = ["female", "female", "female", "male", "male", "child"]
    pred = ["female", "Female.", "male", "male", "I think female", "no idea"]
    out = classification_scores(pred, gold, ids=[f"s{i}" for i in range(6)])
    # female: TP 2, FP 1 (s4), FN 1 (s2) -> F1 4/6; male: TP 1, FP 1 (s2), FN 1 (s4) -> 2/4;
    # child: TP 0, FN 1 (s5, unparseable) -> 0
    assert out["labels"] == ["child", "female", "male"]
    assert out["accuracy"] == pytest.approx(100 * 3 / 6)
    assert out["per_label"]["female"]["f1"] == pytest.approx(100 * 4 / 6)
    assert out["per_label"]["male"]["f1"] == pytest.approx(50.0)
    assert out["per_label"]["female"]["precision"] == pytest.approx(100 * 2 / 3)
    assert out["per_label"]["child"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["macro_f1"] == pytest.approx(100 * (4 / 6 + 2 / 4 + 0) / 3)
    assert (out["num_unparseable"], out["num_out_of_label"]) == (1, 1)
    assert out["unparseable"] == [{"id": "s5", "prediction": "no idea", "reason": "out_of_label"}]


def test_out_of_label_answers_are_counted_named_and_logged(caplog):
    gold = ["slow", "medium", "fast", "fast"]
    pred = ["slow", "quick", "", "fast or slow"]
    with caplog.at_level(logging.WARNING, logger="llava.eval.closed"):
        out = classification_scores(pred, gold, ids=["a:1", "a:2", "a:3", "a:4"])
    assert (out["num_out_of_label"], out["num_empty"], out["num_ambiguous"]) == (1, 1, 1)
    assert [b["id"] for b in out["unparseable"]] == ["a:2", "a:3", "a:4"]
    assert "3 of 4 answers unparseable" in caplog.text and "a:2 (out_of_label: 'quick')" in caplog.text
    assert out["accuracy"] == 25.0


def test_a_given_label_set_and_gold_outside_it():
    out = classification_scores(["male"], ["male"], labels=["male", "female"])
    assert out["labels"] == ["female", "male"] and out["macro_f1"] == pytest.approx(50.0)  # female: F1 0
    with pytest.raises(ValueError, match=r"x7: gold label 'child' is not in the label set"):
        classification_scores(["a"], ["child"], ids=["x7"], labels=["male", "female"])


def test_unparseable_list_is_capped_but_counted():
    n = MAX_LISTED + 5
    out = classification_scores(["?"] * n, ["yes"] * n)
    assert out["num_unparseable"] == n and len(out["unparseable"]) == MAX_LISTED


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("150", 150.0),
        ("about 1,250.5 words per minute", 1250.5),
        ("-3 degrees", -3.0),
        ("The speaker is 42 years old, maybe 45", 42.0),  # the first number
        (".5", 0.5),
        ("forty two", None),
        ("", None),
    ],
)
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_regression_mae_and_unparseable():
    out = regression_scores(["150 wpm", "about 170", "fast"], ["140", 160.0, "155"], ids=["r1", "r2", "r3"])
    assert out["mae"] == pytest.approx((10 + 10) / 2)
    assert (out["num_parsed"], out["num_unparseable"]) == (2, 1)
    assert out["unparseable"] == [{"id": "r3", "prediction": "fast", "reason": "no_number"}]
    assert regression_scores(["none"], ["1"])["mae"] is None
    with pytest.raises(ValueError, match="r9: gold value 'n/a' is not a number"):
        regression_scores(["1"], ["n/a"], ids=["r9"])


def test_registered_scorer_families():
    assert {"classification", "regression"} <= set(METRICS)
    out = score(("classification",), ["female", "nope"], [["female"], ["male"]], ids=["u1", "u2"])
    assert out["accuracy"] == 50.0 and out["unparseable"][0]["id"] == "u2"
    out = score(("regression",), ["3", "5"], [["4"], ["5"]])
    assert out["mae"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        score(("regression",), ["3", "5"], [["4"]])


def test_evaluation_names_the_unparseable_samples_by_row_id():
    from llava.eval.eval import score_predictions

    records = {
        "Parquet.CLS.en:gender_test:0": {"prediction": "female", "reference": "female"},
        "Parquet.CLS.en:gender_test:1": {"prediction": "a robot", "reference": "male"},
    }
    out = score_predictions(records, list(records), ("classification",))
    assert out["accuracy"] == 50.0
    assert out["unparseable"] == [
        {"id": "Parquet.CLS.en:gender_test:1", "prediction": "a robot", "reason": "out_of_label"}
    ]
