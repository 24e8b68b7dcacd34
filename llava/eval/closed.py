"""Closed-ended answers: classification (accuracy, macro-F1) and regression from text (MAE).

A speech LLM answers in free text ("The speaker is female.", "about 150 words per minute"); these
scorers map each answer onto the task's answer space first and count what cannot be mapped, so a
model that stops answering in the expected form is visible in the scores instead of hidden in a low
accuracy.

Classification (`classification_scores`):
  * normalisation (`normalize_label`): Unicode NFKC, lower case, punctuation to spaces (an apostrophe
    inside a word is kept), a leading article (a / an / the) dropped, spaces collapsed.
  * the label set is the normalised gold labels of the test set, or the `labels` given.
  * an answer maps to a label when, normalised, it equals the label, or when exactly one label occurs
    in it as whole words ("the speaker is female" -> "female"; "male" does not occur in "female").
    When one found label lies inside another found label ("fast" in "very fast") the longer one is
    taken. Otherwise the answer is *unparseable*: `empty`, `out_of_label` (no label in it) or
    `ambiguous` (several labels). Each unparseable answer counts as wrong, is counted by reason and is
    reported with its sample id (the first `MAX_LISTED` in the scores, every one in the log).
  * accuracy: correct / all answers. macro-F1: the mean over the label set of each label's F1
    (2 TP / (2 TP + FP + FN), 0 for a label that is neither gold nor predicted), as
    scikit-learn's `f1_score(average="macro", labels=label_set)` with unparseable answers as a class
    outside the set.

Regression (`regression_scores`): the first number written with digits in the answer ("about 1,250.5
wpm" -> 1250.5; thousands separators allowed; number words are not read) against the gold value. An
answer without a number is unparseable (counted, reported by sample id, left out of the MAE). A gold
value that is not a number is an error naming the sample.

All rates are in percent, as the other metric families.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_LISTED",
    "classification_family",
    "classification_scores",
    "match_label",
    "normalize_label",
    "parse_number",
    "regression_family",
    "regression_scores",
]

# Unparseable answers listed by id in the scores (all of them are logged).
MAX_LISTED = 50

_SPACES = re.compile(r"\s+")
_ARTICLE = re.compile(r"^(a|an|the)\s+")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def normalize_label(text: str) -> str:
    """Lower-cased, punctuation-free, article-free form of a label or an answer."""
    text = unicodedata.normalize("NFKC", str(text)).lower().replace("\u2019", "'")
    chars = list(text)
    for i, ch in enumerate(chars):
        if ch == "'":
            if not (0 < i < len(chars) - 1 and chars[i - 1].isalnum() and chars[i + 1].isalnum()):
                chars[i] = " "
        elif unicodedata.category(ch)[0] in "PS":
            chars[i] = " "
    text = _SPACES.sub(" ", "".join(chars)).strip()
    return _ARTICLE.sub("", text)


def _has_words(text: str, words: str) -> bool:
    """Whether `words` occur in `text` as whole words ("male" is not in "female")."""
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def match_label(answer: str, labels: Sequence[str]) -> tuple[str | None, str | None]:
    """(label, None) for an answer that names one label of `labels` (normalised forms), else
    (None, reason) with reason `empty`, `out_of_label` or `ambiguous`."""
    norm = normalize_label(answer)
    if not norm:
        return None, "empty"
    if norm in labels:
        return norm, None
    found = [lab for lab in labels if _has_words(norm, lab)]
    # "very fast" names "fast" too: keep only labels not contained in another found label.
    found = [lab for lab in found if not any(lab != other and _has_words(other, lab) for other in found)]
    if len(found) == 1:
        return found[0], None
    return None, ("out_of_label" if not found else "ambiguous")


def _report(what: str, bad: list[dict[str, Any]], n: int) -> None:
    if bad:
        shown = ", ".join(f"{b['id']} ({b['reason']}: {b['prediction']!r})" for b in bad[:MAX_LISTED])
        more = f" ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        logger.warning("%s: %d of %d answers unparseable: %s%s", what, len(bad), n, shown, more)


def _ids(ids: Sequence[str] | None, n: int) -> list[str]:
    if ids is None:
        return [f"item {i}" for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} sample ids for {n} predictions")
    return [str(i) for i in ids]


def classification_scores(
    predictions: Sequence[str],
    golds: Sequence[str],
    ids: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro-F1 (percent) of text answers against gold labels, with unparseable counts.

    `ids` name the samples in reports (default: item indices); `labels` fixes the label set (default:
    the normalised gold labels). A gold label outside a given label set is an error naming the sample.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"classification: {len(predictions)} predictions for {len(golds)} references")
    if not golds:
        raise ValueError("classification: nothing to score (0 references)")
    names = _ids(ids, len(golds))
    gold = [normalize_label(g) for g in golds]
    for name, g, raw in zip(names, gold, golds):
        if not g:
            raise ValueError(f"classification: {name}: empty gold label {raw!r}")
    label_set = sorted(set(gold)) if labels is None else sorted({normalize_label(x) for x in labels})
    if labels is not None:
        outside = [(n, g) for n, g in zip(names, gold) if g not in label_set]
        if outside:
            raise ValueError(
                f"classification: {outside[0][0]}: gold label {outside[0][1]!r} is not in the label set "
                f"{label_set} ({len(outside)} such samples)"
            )
    predicted: list[str | None] = []
    bad: list[dict[str, Any]] = []
    for name, answer in zip(names, predictions):
        label, reason = match_label(answer, label_set)
        predicted.append(label)
        if reason is not None:
            bad.append({"id": name, "prediction": str(answer), "reason": reason})
    _report("classification", bad, len(gold))

    per_label: dict[str, dict[str, float | int]] = {}
    for lab in label_set:
        tp = sum(p == lab and g == lab for p, g in zip(predicted, gold))
        fp = sum(p == lab and g != lab for p, g in zip(predicted, gold))
        fn = sum(p != lab and g == lab for p, g in zip(predicted, gold))
        per_label[lab] = {
            "precision": 100.0 * tp / (tp + fp) if tp + fp else 0.0,
            "recall": 100.0 * tp / (tp + fn) if tp + fn else 0.0,
            "f1": 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "support": tp + fn,
        }
    reasons = Counter(b["reason"] for b in bad)
    return {
        "accuracy": 100.0 * sum(p == g for p, g in zip(predicted, gold)) / len(gold),
        "macro_f1": sum(v["f1"] for v in per_label.values()) / len(label_set),
        "labels": label_set,
        "per_label": per_label,
        "num_answers": len(gold),
        "num_unparseable": len(bad),
        "num_out_of_label": reasons["out_of_label"],
        "num_ambiguous": reasons["ambiguous"],
        "num_empty": reasons["empty"],
        "unparseable": bad[:MAX_LISTED],
    }


def parse_number(text: str) -> float | None:
    """The first number written with digits in `text` (thousands commas allowed), or None."""
    m = _NUMBER.search(unicodedata.normalize("NFKC", str(text)))
    return float(m.group(0).replace(",", "")) if m else None


def regression_scores(
    predictions: Sequence[str], golds: Sequence[str | float], ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Mean absolute error of the numbers in text answers, with the unparseable answers counted.

    `mae` is over the parseable answers only (None when there is none); `num_unparseable` says how
    many were left out and `unparseable` lists the first `MAX_LISTED` by sample id.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"regression: {len(predictions)} predictions for {len(golds)} references")
    if not golds:
        raise ValueError("regression: nothing to score (0 references)")
    names = _ids(ids, len(golds))
    errors: list[float] = []
    bad: list[dict[str, Any]] = []
    for name, answer, raw in zip(names, predictions, golds):
        gold = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else parse_number(raw)
        if gold is None:
            raise ValueError(f"regression: {name}: gold value {raw!r} is not a number")
        value = parse_number(answer)
        if value is None:
            bad.append({"id": name, "prediction": str(answer), "reason": "no_number"})
        else:
            errors.append(abs(value - float(gold)))
    _report("regression", bad, len(golds))
    return {
        "mae": sum(errors) / len(errors) if errors else None,
        "num_answers": len(golds),
        "num_parsed": len(errors),
        "num_unparseable": len(bad),
        "unparseable": bad[:MAX_LISTED],
    }


# ------------------------------------------------------------------- adapters for llava.eval.metrics
def _first_references(references: Sequence[Sequence[str]], what: str, ids: Sequence[str] | None) -> list[str]:
    names = _ids(ids, len(references))
    for name, refs in zip(names, references):
        if not refs:
            raise ValueError(f"{what}: {name} has no reference")
    return [refs[0] for refs in references]


def classification_family(
    predictions: list[str],
    references: list[list[str]],
    sources: Sequence[str | None] | None = None,
    ids: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The "classification" scorer family of `llava.eval.metrics.METRICS` (the first reference is the
    gold label; `ids` name samples in reports; `labels` fixes the label set)."""
    golds = _first_references(references, "classification", ids)
    return classification_scores(predictions, golds, ids=ids, labels=labels)


def regression_family(
    predictions: list[str],
    references: list[list[str]],
    sources: Sequence[str | None] | None = None,
    ids: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The "regression" scorer family of `llava.eval.metrics.METRICS` (the first reference is the gold
    value)."""
    return regression_scores(predictions, _first_references(references, "regression", ids), ids=ids)
