"""Task metrics: WER for ASR, BLEU/chrF (and optionally COMET) for ST, SQuAD EM/F1 for SQA.

All scores are reported in percent (fraction * 100). Every scorer refuses inputs whose prediction
and reference counts differ: a run never reports on fewer predictions than references.

Text normalisation for WER (``normalize_for_wer``):
  * Unicode NFKC (full-width forms, ligatures), then ``str.lower``.
  * Typographic apostrophes (U+2019, U+2018, U+02BC) become ``'``. An apostrophe between two
    letters or digits is kept (``don't``, ``o'clock`` stay one word); any other apostrophe is
    dropped like punctuation (quotes such as ``'hello'``).
  * Every other Unicode punctuation character (category ``P*``, the set jiwer's
    ``RemovePunctuation`` uses; it includes ``%``, ``&``, ``#``, ``@``) becomes a space, so
    ``well-known`` and ``well known`` score alike. Symbols (category ``S*``: ``$``, ``+``, ``€``)
    are kept.
  * Whitespace is collapsed to single spaces and stripped.

Empty references (after normalisation) in ASR:
  * corpus WER (``wer``) follows jiwer: total edits / total reference words over all pairs; an
    empty reference contributes its insertions and no reference words. If every reference is
    empty, the corpus WER is 0 when no word was inserted and 100 otherwise.
  * per-utterance mean (``wer_utt_mean``): an utterance with an empty reference scores 0 when its
    hypothesis is empty too and 100 otherwise; it is kept in the mean, and ``num_empty_refs``
    reports how many there were.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jiwer
import sacrebleu

__all__ = [
    "DEFAULT_COMET_MODEL",
    "SCORERS",
    "MetricUnavailable",
    "asr_scores",
    "comet_scores",
    "normalize_for_squad",
    "normalize_for_wer",
    "score",
    "squad_scores",
    "st_scores",
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


def asr_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Word error rates in percent, after ``normalize_for_wer`` on both sides.

    Returns ``wer`` (corpus: total edits / total reference words), ``wer_utt_mean`` (mean of the
    per-utterance WERs, as the paper reports it), the edit counts ``substitutions``,
    ``deletions``, ``insertions``, ``hits``, ``ref_words``, and ``num_utterances``,
    ``num_empty_refs``. See the module docstring for empty references.
    """
    _check_lengths(hyps, refs, "ASR")
    norm_hyps = [normalize_for_wer(h) for h in hyps]
    norm_refs = [normalize_for_wer(r) for r in refs]
    out = jiwer.process_words(norm_refs, norm_hyps)

    per_utt = []
    num_empty = 0
    for ref_words, hyp_words, alignment in zip(out.references, out.hypotheses, out.alignments):
        if not ref_words:
            num_empty += 1
            per_utt.append(0.0 if not hyp_words else 1.0)
        else:
            per_utt.append(_utterance_errors(alignment) / len(ref_words))

    return {
        "wer": 100.0 * float(out.wer),
        "wer_utt_mean": 100.0 * sum(per_utt) / len(per_utt),
        "substitutions": int(out.substitutions),
        "deletions": int(out.deletions),
        "insertions": int(out.insertions),
        "hits": int(out.hits),
        "ref_words": int(out.hits + out.substitutions + out.deletions),
        "num_utterances": len(per_utt),
        "num_empty_refs": num_empty,
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
SCORERS: dict[str, Callable[..., dict[str, Any]]] = {
    "ASR": asr_scores,
    "ST": st_scores,
    "SQA": squad_scores,
}


def score(task: str, preds: Sequence[str], refs: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """Score ``preds`` against ``refs`` with the task's scorer (extra kwargs go to the scorer)."""
    if task not in SCORERS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(SCORERS)}")
    _check_lengths(preds, refs, task)
    return SCORERS[task](preds, refs, **kwargs)
