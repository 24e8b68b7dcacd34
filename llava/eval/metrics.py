"""Task metrics: WER for ASR, BLEU/chrF (and optionally COMET) for ST, SQuAD EM/F1 for SQA,
accuracy/macro-F1 and MAE for closed-ended classification and regression (`llava.eval.closed`).

Metrics are looked up in `METRICS` by the scorer-family names a task lists in its `metrics`
(`llava.dataset.tasks.TASKS`): "asr", "st", "sqa". Every family takes the predictions, the references
of each prediction (a list per item: SQA all gold answers, otherwise the one target) and, when known,
the source texts. All scores are in percent (fraction * 100). Every scorer refuses inputs whose
prediction and reference counts differ: a run never reports on fewer predictions than references.

Two word error rates, each named for what it is:

``wer_paper``: the paper's WER exactly as the original implementation computes it: jiwer
  ``ToLowerCase``, ``RemovePunctuation`` (deletes every Unicode punctuation character, category ``P*``,
  so "don't" -> "dont" and "well-known" -> "wellknown"), ``Strip``, ``RemoveMultipleSpaces``; then the
  WER of each utterance, and their mean. An utterance whose reference is empty after this scores 0
  when its hypothesis is empty too and 100 otherwise (counted in ``num_empty_refs``). A mean of
  per-utterance rates is unbounded per utterance: one reply that runs on (a 4-word reference, a
  50-word hypothesis) adds as much as a dozen wrong ones, so ``num_over_100`` counts the utterances
  whose WER exceeds 100 % (more edits than reference words: a reply that ran on or answered
  something else), the figure that tells such a case from uniformly poor transcripts.

``wer_corpus``: total word edits / total reference words over the test set, after our
  normalisation (``normalize_for_wer``):
  * Unicode NFKC (full-width forms, ligatures), then ``str.lower``.
  * Typographic apostrophes (U+2019, U+2018, U+02BC) become ``'``. An apostrophe between two
    letters or digits is kept (``don't``, ``o'clock`` stay one word); any other apostrophe is
    dropped like punctuation (quotes such as ``'hello'``).
  * Every other Unicode punctuation character (category ``P*``, the set jiwer's
    ``RemovePunctuation`` uses; it includes ``%``, ``&``, ``#``, ``@``) becomes a space, so
    ``well-known`` and ``well known`` score alike. Symbols (category ``S*``: ``$``, ``+``, ``€``)
    are kept.
  * Whitespace is collapsed to single spaces and stripped.
  An empty reference contributes its insertions and no reference words; if every reference is
  empty, the corpus WER is 0 when no word was inserted and 100 otherwise. The edit counts
  (``substitutions``, ``deletions``, ``insertions``, ``hits``, ``ref_words``) are those of this WER.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jiwer
import sacrebleu

from llava.eval.closed import classification_family, regression_family

__all__ = [
    "DEFAULT_COMET_MODEL",
    "METRICS",
    "Metric",
    "MetricUnavailable",
    "asr_scores",
    "comet_scores",
    "get_metric",
    "normalize_for_squad",
    "normalize_for_wer",
    "normalize_paper_wer",
    "score",
    "squad_scores",
    "st_scores",
    "wer_paper",
]

DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (a missing optional package or model)."""


def _check_lengths(preds: Sequence[Any], refs: Sequence[Any], what: str) -> None:
    if len(preds) != len(refs):
        raise ValueError(
            f"{what}: {len(preds)} predictions for {len(refs)} references; "
            "every reference needs exactly one prediction"
        )
    if len(refs) == 0:
        raise ValueError(f"{what}: nothing to score (0 references)")


# ------------------------------------------------------------------------------------------ ASR
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_SPACES = re.compile(r"\s+")


def normalize_for_wer(text: str) -> str:
    """Lower-case, strip Unicode punctuation (keeping word-internal apostrophes), collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    chars = list(text)
    for i, ch in enumerate(chars):
        if ch == "'":
            inside_word = 0 < i < len(chars) - 1 and chars[i - 1].isalnum() and chars[i + 1].isalnum()
            if not inside_word:
                chars[i] = " "
        elif unicodedata.category(ch).startswith("P"):
            chars[i] = " "
    return _SPACES.sub(" ", "".join(chars)).strip()


def _utterance_errors(alignment: Sequence[jiwer.AlignmentChunk]) -> int:
    errors = 0
    for chunk in alignment:
        if chunk.type in ("substitute", "delete"):
            errors += chunk.ref_end_idx - chunk.ref_start_idx
        elif chunk.type == "insert":
            errors += chunk.hyp_end_idx - chunk.hyp_start_idx
    return errors


# The original implementation's normalisation, in its order.
_PAPER_TRANSFORM = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.Strip(), jiwer.RemoveMultipleSpaces()]
)


def normalize_paper_wer(text: str) -> str:
    """The paper's WER normalisation: lower-case, delete punctuation, strip, collapse spaces."""
    return _PAPER_TRANSFORM(text)


def _per_utterance_wers(norm_refs: list[str], norm_hyps: list[str]) -> tuple[list[float], int]:
    """WER of each pair (as fractions) and the number of empty references (0 or 1 for those)."""
    words = jiwer.ReduceToListOfListOfWords()
    wers: list[float | None] = [None] * len(norm_refs)
    scored = []
    num_empty = 0
    for i, (r, h) in enumerate(zip(norm_refs, norm_hyps)):
        if not words(r)[0]:  # jiwer refuses empty references: the rule of the module docstring
            num_empty += 1
            wers[i] = 0.0 if not words(h)[0] else 1.0
        else:
            scored.append(i)
    if scored:
        out = jiwer.process_words([norm_refs[i] for i in scored], [norm_hyps[i] for i in scored])
        for i, ref_words, alignment in zip(scored, out.references, out.alignments):
            wers[i] = _utterance_errors(alignment) / len(ref_words)
    return [float(w) for w in wers], num_empty


def wer_paper(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """The paper's WER in percent: mean over utterances of the WER after `normalize_paper_wer`."""
    _check_lengths(hyps, refs, "ASR")
    per_utt, _ = _per_utterance_wers(
        [normalize_paper_wer(r) for r in refs], [normalize_paper_wer(h) for h in hyps]
    )
    return 100.0 * sum(per_utt) / len(per_utt)


def asr_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Both word error rates in percent (see the module docstring) and the corpus WER's edit counts.

    Returns ``wer_paper`` (the paper's: mean of per-utterance WERs, its normalisation),
    ``wer_corpus`` (total edits / total reference words, our normalisation), the corpus WER's
    ``substitutions``, ``deletions``, ``insertions``, ``hits``, ``ref_words``, and ``num_utterances``,
    ``num_empty_refs`` (empty references after the paper's normalisation), ``num_over_100``
    (utterances whose paper WER exceeds 100 %).
    """
    _check_lengths(hyps, refs, "ASR")
    per_utt, num_empty = _per_utterance_wers(
        [normalize_paper_wer(r) for r in refs], [normalize_paper_wer(h) for h in hyps]
    )
    out = jiwer.process_words([normalize_for_wer(r) for r in refs], [normalize_for_wer(h) for h in hyps])
    return {
        "wer_paper": 100.0 * sum(per_utt) / len(per_utt),
        "wer_corpus": 100.0 * float(out.wer),
        "substitutions": int(out.substitutions),
        "deletions": int(out.deletions),
        "insertions": int(out.insertions),
        "hits": int(out.hits),
        "ref_words": int(out.hits + out.substitutions + out.deletions),
        "num_utterances": len(per_utt),
        "num_empty_refs": num_empty,
        "num_over_100": sum(w > 1.0 for w in per_utt),
    }


# ------------------------------------------------------------------------------------------- ST
def _comet_checkpoint(model: str) -> str:
    """Resolve a COMET model name, a local model directory or a ``.ckpt`` file to a checkpoint."""
    if os.path.isfile(model):
        return model
    if os.path.isdir(model):
        ckpt = os.path.join(model, "checkpoints", "model.ckpt")
        if os.path.isfile(ckpt):
            return ckpt
        raise MetricUnavailable(f"COMET model directory {model!r} has no checkpoints/model.ckpt")
    from comet import download_model

    try:
        # Served from the Hugging Face cache when present; honours HF_HUB_OFFLINE.
        return download_model(model)
    except Exception as exc:
        raise MetricUnavailable(
            f"COMET model {model!r} is not available ({type(exc).__name__}: {exc}); pass a local "
            "model directory or checkpoint file, or a hub name that is cached or downloadable"
        ) from exc


def comet_scores(
    srcs: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
    model: str = DEFAULT_COMET_MODEL,
    batch_size: int = 16,
    gpus: int | None = None,
) -> dict[str, Any]:
    """COMET system score (mean of segment scores, in percent) with the ``unbabel-comet`` package.

    ``model`` is a hub name (e.g. ``Unbabel/wmt22-comet-da``), a downloaded model directory
    (containing ``checkpoints/model.ckpt``) or a checkpoint file. ``gpus`` defaults to 1 when CUDA
    is available, else 0. Raises ``MetricUnavailable`` when the package or the model is missing.
    """
    _check_lengths(hyps, refs, "COMET")
    if len(srcs) != len(refs):
        raise ValueError(f"COMET: {len(srcs)} sources for {len(refs)} references")
    try:
        import comet
    except ImportError as exc:
        raise MetricUnavailable(
            "COMET needs the `unbabel-comet` package: pip install 'speech-llava[comet]' "
            "(or pip install unbabel-comet)"
        ) from exc

    checkpoint = _comet_checkpoint(model)
    scorer = comet.load_from_checkpoint(checkpoint)
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(srcs, hyps, refs)]
    result = scorer.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
    return {"comet": 100.0 * float(result.system_score), "comet_model": model}


def st_scores(
    hyps: Sequence[str],
    refs: Sequence[str],
    srcs: Sequence[str] | None = None,
    comet_model: str | None = None,
) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (tokenize 13a, cased) and chrF, each with its signature.

    COMET runs only when ``comet_model`` is given (it needs ``srcs``); if it is asked for but
    unavailable, ``comet`` is ``None`` and ``comet_error`` says why, so the other scores survive.
    """
    _check_lengths(hyps, refs, "ST")
    hyps, refs = list(hyps), list(refs)
    bleu = sacrebleu.BLEU(tokenize="13a", lowercase=False)
    chrf = sacrebleu.CHRF()
    bleu_res = bleu.corpus_score(hyps, [refs])
    chrf_res = chrf.corpus_score(hyps, [refs])
    out: dict[str, Any] = {
        "bleu": float(bleu_res.score),
        "bleu_signature": str(bleu.get_signature()),
        "bleu_precisions": [float(p) for p in bleu_res.precisions],
        "bleu_bp": float(bleu_res.bp),
        "hyp_len": int(bleu_res.sys_len),
        "ref_len": int(bleu_res.ref_len),
        "chrf": float(chrf_res.score),
        "chrf_signature": str(chrf.get_signature()),
        "num_segments": len(refs),
    }
    if comet_model is not None:
        if srcs is None:
            raise ValueError("ST: COMET was asked for (comet_model) but no source texts (srcs) were given")
        try:
            out.update(comet_scores(srcs, hyps, refs, model=comet_model))
        except MetricUnavailable as exc:
            out.update({"comet": None, "comet_model": comet_model, "comet_error": str(exc)})
    return out


# ------------------------------------------------------------------------------------------ SQA
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_for_squad(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lower, drop ASCII punctuation and a/an/the, fix spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _squad_f1(pred: str, gold: str) -> float:
    # As in the official v1.1 script: no shared token (including both sides empty) gives 0.
    pred_tokens = normalize_for_squad(pred).split()
    gold_tokens = normalize_for_squad(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(preds: Sequence[str], golds: Sequence[Sequence[str] | str]) -> dict[str, Any]:
    """SQuAD v1.1 exact match and token F1 in percent, each the max over an item's gold answers.

    ``golds[i]`` is a list of acceptable answers (a bare string counts as a one-answer list).
    """
    _check_lengths(preds, golds, "SQA")
    em_total = f1_total = 0.0
    for i, (pred, answers) in enumerate(zip(preds, golds)):
        answers = [answers] if isinstance(answers, str) else list(answers)
        if not answers:
            raise ValueError(f"SQA: reference {i} has no gold answer")
        norm_pred = normalize_for_squad(pred)
        em_total += max(float(norm_pred == normalize_for_squad(a)) for a in answers)
        f1_total += max(_squad_f1(pred, a) for a in answers)
    n = len(golds)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n, "num_questions": n}


# ------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """A scorer family: `score(predictions, references, sources, **options) -> {name: value}`."""

    name: str
    description: str
    scorer: Callable[..., dict[str, Any]]

    def score(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        sources: Sequence[str | None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """`references[i]` lists the acceptable outputs of item i (one for ASR/ST, all gold answers for SQA)."""
        _check_lengths(predictions, references, self.name)
        return self.scorer(list(predictions), [list(r) for r in references], sources, **options)


def _first(references: list[list[str]], what: str) -> list[str]:
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"{what}: item {i} has no reference")
    return [refs[0] for refs in references]


def _asr(preds, references, sources, **options) -> dict[str, Any]:
    return asr_scores(preds, _first(references, "asr"))


def _st(preds, references, sources, comet_model: str | None = None, **options) -> dict[str, Any]:
    srcs = None
    if comet_model is not None:
        srcs = [s or "" for s in sources] if sources is not None else None
    return st_scores(preds, _first(references, "st"), srcs=srcs, comet_model=comet_model)


def _sqa(preds, references, sources, **options) -> dict[str, Any]:
    return squad_scores(preds, references)


# Keyed by the scorer-family names of `llava.dataset.tasks.Task.metrics`.
METRICS: dict[str, Metric] = {
    "asr": Metric("asr", "the paper's WER and a corpus WER (see the module docstring)", _asr),
    "st": Metric("st", "sacreBLEU (13a, cased) and chrF; COMET when a model is given", _st),
    "sqa": Metric("sqa", "SQuAD v1.1 exact match and F1, max over gold answers", _sqa),
    # Closed-ended tasks (llava.eval.closed): answers mapped onto labels / numbers, unparseable counted.
    "classification": Metric(
        "classification",
        "accuracy and macro-F1 over the label set (llava.eval.closed)",
        classification_family,
    ),
    "regression": Metric(
        "regression", "mean absolute error of the answered number (llava.eval.closed)", regression_family
    ),
}


def get_metric(name: str) -> Metric:
    """The scorer family `name`; raises KeyError listing the known ones."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown metric {name!r}; known metrics: {list(METRICS)}") from None


def score(
    metrics: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    sources: Sequence[str | None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score with every family in `metrics` (a task's `metrics`); their results merged in one dict.

    `options` go to every family (e.g. `comet_model` for "st"; the others ignore it).
    """
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a sequence of names, e.g. ({metrics!r},), not a string")
    families = [get_metric(m) for m in metrics]
    if not families:
        raise ValueError(f"no metric to score with; known metrics: {list(METRICS)}")
    _check_lengths(predictions, references, "+".join(metrics))
    out: dict[str, Any] = {}
    for family in families:
        out.update(family.score(predictions, references, sources, **options))
    return out


# The headline scores of a `{stem}_scores.json`, in table order (logs, model cards, reports).
HEADLINE_KEYS: tuple[str, ...] = (
    "wer_paper",
    "wer_corpus",
    "bleu",
    "chrf",
    "comet",
    "exact_match",
    "f1",
    "accuracy",
    "macro_f1",
    "mae",
)
