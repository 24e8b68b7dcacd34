"""CTC forced alignment: word boundaries `[[start, end, word], ...]` for real (non-synthetic) data.

Given a CTC model's log-emissions over its (character) vocabulary and the transcript, the Viterbi
path through the standard CTC trellis gives each transcript token a span of frames; character
spans are grouped into words at the word delimiter (`|` in wav2vec2/HuBERT character vocabularies)
and frames become seconds through the model's frame stride (input samples per frame, 20 ms for
HuBERT/wav2vec2 at 16 kHz). The returned words are the transcript's own whitespace tokens, with
their case and punctuation, so `" ".join(w for _, _, w in bounds) == " ".join(transcript.split())`.

CLI (any Hugging Face CTC model with a character tokenizer):
    python -m llava.dataset.alignment --parquet IN.parquet --out OUT.parquet \
        --model facebook/wav2vec2-base-960h --text-column transcription
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava.fileio import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_DELIMITER = "|"

__all__ = [
    "AlignmentError",
    "CTCAligner",
    "CharVocabulary",
    "align_parquet",
    "align_transcript",
    "ctc_viterbi",
    "frames_to_seconds",
    "transcript_targets",
    "word_frame_spans",
]


class AlignmentError(ValueError):
    """The transcript cannot be aligned to the emissions (e.g. more tokens than frames)."""


class AlignmentInputError(ValueError):
    """The input parquet file cannot be used (unreadable, or a named column is missing)."""


# ----------------------------------------------------------------------------- Viterbi
def ctc_viterbi(
    log_probs: np.ndarray, targets: Sequence[int], blank: int = 0
) -> tuple[list[tuple[int, int]], float]:
    """Best CTC alignment of `targets` to `log_probs` ([T, V] log-probabilities).

    States are the targets with blanks around and between them (2L+1). From one frame to the
    next a path stays in its state, advances by one, or skips a blank between two different
    labels; it starts in the first blank or the first label and ends in the last label or the
    final blank. Returns (per target token its inclusive (first_frame, last_frame) span, path
    log-probability). Ties go to the earliest of stay / advance / skip.
    """
    emissions = np.asarray(log_probs, dtype=np.float64)
    if emissions.ndim != 2:
        raise ValueError(f"log_probs must be [T, V], got shape {emissions.shape}")
    n_frames, vocab = emissions.shape
    targets = [int(t) for t in targets]
    if not targets:
        return [], float(emissions[:, blank].sum())
    if any(t == blank for t in targets):
        raise AlignmentError("targets contain the blank token")
    if any(not 0 <= t < vocab for t in targets):
        raise AlignmentError(f"target ids must be in [0, {vocab})")
    repeats = sum(a == b for a, b in zip(targets, targets[1:]))
    if n_frames < len(targets) + repeats:
        raise AlignmentError(
            f"{len(targets)} tokens ({repeats} repeats) need at least "
            f"{len(targets) + repeats} frames, got {n_frames}"
        )

    n_states = 2 * len(targets) + 1
    ext = np.full(n_states, blank, dtype=np.int64)  # [S] token id of every state
    ext[1::2] = targets
    can_skip = np.zeros(n_states, dtype=bool)  # [S] may come from s-2 (label after a different label)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = emissions[:, ext]  # [T, S]

    neg_inf = -np.inf
    score = np.full(n_states, neg_inf)
    score[0] = emit[0, 0]
    score[1] = emit[0, 1]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, n_frames):
        advance = np.concatenate(([neg_inf], score[:-1]))
        skip = np.concatenate(([neg_inf, neg_inf], score[:-2]))
        skip[~can_skip] = neg_inf
        candidates = np.stack([score, advance, skip])  # [3, S]
        choice = np.argmax(candidates, axis=0)
        score = candidates[choice, np.arange(n_states)] + emit[t]
        back[t] = choice

    last = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    best = float(score[last])
    if not np.isfinite(best):
        raise AlignmentError("no valid CTC path (emissions give the targets zero probability)")
    states = np.empty(n_frames, dtype=np.int64)
    s = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    spans = []
    for i in range(len(targets)):
        frames = np.flatnonzero(states == 2 * i + 1)
        spans.append((int(frames[0]), int(frames[-1])))
    return spans, best


# ----------------------------------------------------------------------------- words
@dataclass
class CharVocabulary:
    """What alignment needs to know about a CTC model's character vocabulary."""

    token_to_id: dict[str, int]
    blank_id: int
    delimiter: str = DEFAULT_DELIMITER  # word separator token ("|" for wav2vec2; " " for some models)

    @property
    def case(self) -> str:
        """ "upper", "lower" or "mixed": how the vocabulary spells letters."""
        letters = [t for t in self.token_to_id if len(t) == 1 and t.isalpha()]
        upper = sum(t.isupper() for t in letters)
        lower = sum(t.islower() for t in letters)
        if upper and not lower:
            return "upper"
        if lower and not upper:
            return "lower"
        return "mixed"

    def normalize_word(self, word: str) -> list[str]:
        """The characters of `word` the vocabulary can spell (case adapted, the rest dropped)."""
        case = self.case
        word = word.upper() if case == "upper" else word.lower() if case == "lower" else word
        return [c for c in word if c in self.token_to_id and c != self.delimiter]


def transcript_targets(transcript: str, vocab: CharVocabulary) -> tuple[list[int], list[int], list[str]]:
    """Token ids of `transcript` with delimiters between words.

    Returns (target ids, for every target the index of its word or -1 for a delimiter, the words).
    Words with no spellable character (e.g. "&", "42" for a letters-only vocabulary) get no tokens.
    """
    words = transcript.split()
    ids: list[int] = []
    owner: list[int] = []
    delim_id = vocab.token_to_id.get(vocab.delimiter)
    for w, word in enumerate(words):
        chars = vocab.normalize_word(word)
        if not chars:
            continue
        if ids and delim_id is not None:
            ids.append(delim_id)
            owner.append(-1)
        ids += [vocab.token_to_id[c] for c in chars]
        owner += [w] * len(chars)
    return ids, owner, words


def word_frame_spans(
    spans: Sequence[tuple[int, int]], owner: Sequence[int], n_words: int
) -> list[tuple[int, int] | None]:
    """Per word, (first frame of its first character, last frame of its last character), or None."""
    out: list[tuple[int, int] | None] = [None] * n_words
    for (first, last), w in zip(spans, owner):
        if w < 0:
            continue
        cur = out[w]
        out[w] = (first, last) if cur is None else (min(cur[0], first), max(cur[1], last))
    return out


def frames_to_seconds(
    word_spans: Sequence[tuple[int, int] | None], words: Sequence[str], frame_stride: float, duration: float
) -> list[list]:
    """`[[start, end, word], ...]` in seconds: a word runs from its first frame's start to its last frame's end.

    A word without frames (nothing spellable) takes the gap between its neighbours (possibly empty).
    """
    bounds: list[list] = []
    for i, (span, word) in enumerate(zip(word_spans, words)):
        if span is not None:
            start, end = span[0] * frame_stride, (span[1] + 1) * frame_stride
        else:
            start = bounds[-1][1] if bounds else 0.0
            nxt = next((s for s in word_spans[i + 1 :] if s is not None), None)
            end = max(start, nxt[0] * frame_stride) if nxt is not None else max(start, duration)
        bounds.append([round(min(start, duration), 3), round(min(end, duration), 3), word])
    return bounds


def align_transcript(
    log_probs: np.ndarray,
    transcript: str,
    vocab: CharVocabulary,
    frame_stride: float,
    duration: float | None = None,
) -> list[list]:
    """Word boundaries of `transcript` from log-emissions [T, V] with `frame_stride` seconds per frame."""
    n_frames = int(np.asarray(log_probs).shape[0])
    duration = n_frames * frame_stride if duration is None else duration
    ids, owner, words = transcript_targets(transcript, vocab)
    if not words:
        raise AlignmentError("empty transcript")
    if not ids:
        raise AlignmentError(f"no character of {transcript!r} is in the model's vocabulary")
    spans, _ = ctc_viterbi(log_probs, ids, blank=vocab.blank_id)
    return frames_to_seconds(word_frame_spans(spans, owner, len(words)), words, frame_stride, duration)


# ----------------------------------------------------------------------------- model
class CTCAligner:
    """A Hugging Face CTC model (AutoModelForCTC) with its feature extractor and character vocabulary."""

    def __init__(self, model_name_or_path: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

        self.torch = torch
        self.device = torch.device(device)
        self.model = AutoModelForCTC.from_pretrained(model_name_or_path).to(self.device).eval()
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        token_to_id = dict(tokenizer.get_vocab())
        blank = self.model.config.pad_token_id
        if blank is None:
            blank = tokenizer.pad_token_id
        if blank is None:
            raise ValueError(f"{model_name_or_path}: cannot tell the CTC blank (no pad_token_id)")
        delimiter = getattr(tokenizer, "word_delimiter_token", None) or DEFAULT_DELIMITER
        if delimiter not in token_to_id and " " in token_to_id:
            delimiter = " "
        self.vocab = CharVocabulary(token_to_id=token_to_id, blank_id=int(blank), delimiter=str(delimiter))
        self.sampling_rate = int(getattr(self.feature_extractor, "sampling_rate", 16000))

    def log_probs(self, wave: np.ndarray) -> np.ndarray:
        """[T, V] log-probabilities for a float32 mono waveform at `self.sampling_rate`."""
        torch = self.torch
        inputs = self.feature_extractor(wave, sampling_rate=self.sampling_rate, return_tensors="pt")
        values = inputs["input_values"].to(self.device)  # [1, S]
        with torch.inference_mode():
            logits = self.model(values).logits[0]  # [T, V]
        return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def align(self, wave: np.ndarray, transcript: str) -> list[list]:
        log_probs = self.log_probs(wave)
        duration = len(wave) / self.sampling_rate
        stride = len(wave) / log_probs.shape[0] / self.sampling_rate  # seconds per frame
        return align_transcript(log_probs, transcript, self.vocab, stride, duration)


# ----------------------------------------------------------------------------- parquet
def align_parquet(
    parquet_in: str | os.PathLike,
    parquet_out: str | os.PathLike,
    model: str,
    text_column: str = "transcription",
    audio_column: str = "audio",
    device: str = "cpu",
    strict: bool = False,
    limit: int | None = None,
) -> dict[str, int]:
    """Add a `word_boundaries` column (JSON strings; null where a row could not be aligned) to a parquet file.

    Rows that fail (undecodable audio, empty transcript, too short audio) are kept with a null value
    and counted; with `strict` the first failure raises instead. The output is written atomically.
    Returns counts {"rows", "aligned", "failed"}.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llava.dataset.audio import decode_audio

    try:
        table = pq.read_table(parquet_in)
    except (OSError, pa.ArrowException) as exc:
        raise AlignmentInputError(f"{parquet_in}: cannot read parquet file: {exc}") from None
    for col, flag in ((text_column, "--text-column"), (audio_column, "--audio-column")):
        if col not in table.column_names:
            raise AlignmentInputError(
                f"{parquet_in}: no column {col!r} ({flag}); columns: {table.column_names}"
            )
    aligner = CTCAligner(model, device=device)
    texts = table.column(text_column).to_pylist()
    audios = table.column(audio_column)
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    values: list[str | None] = []
    failures: dict[str, int] = {}
    base_dir = Path(parquet_in).parent
    for i in range(table.num_rows):
        if i >= n:
            values.append(None)
            continue
        try:
            text = texts[i]
            if not isinstance(text, str) or not text.strip():
                raise AlignmentError("empty transcript")
            wave = decode_audio(audios[i].as_py(), aligner.sampling_rate, base_dir=base_dir)
            values.append(json.dumps(aligner.align(wave, text), ensure_ascii=False))
        except (ValueError, RuntimeError) as exc:  # AudioDecodeError/AlignmentError are ValueErrors;
            # the model raises RuntimeError on audio shorter than its receptive field
            if strict:
                raise AlignmentError(f"{parquet_in}: row {i}: {exc}") from exc
            reason = type(exc).__name__
            failures[reason] = failures.get(reason, 0) + 1
            logger.warning("%s: row %d not aligned: %s", parquet_in, i, exc)
            values.append(None)
        if (i + 1) % 100 == 0:
            logger.info("aligned %d / %d rows", i + 1, n)
    column = pa.array(values, type=pa.string())
    if "word_boundaries" in table.column_names:
        table = table.set_column(table.column_names.index("word_boundaries"), "word_boundaries", column)
    else:
        table = table.append_column("word_boundaries", column)
    with atomic_path(parquet_out) as tmp:
        pq.write_table(table, tmp, row_group_size=256)
    failed = sum(failures.values())
    if failed:
        logger.warning("%s: %d of %d rows not aligned (%s)", parquet_in, failed, n, failures)
    return {"rows": table.num_rows, "aligned": n - failed, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.dataset.alignment",
        description="Add CTC forced-alignment word boundaries to a parquet file.",
    )
    parser.add_argument("--parquet", required=True, help="input parquet with audio and transcript columns")
    parser.add_argument("--out", required=True, help="output parquet (input columns + word_boundaries)")
    parser.add_argument(
        "--model", required=True, help="HF CTC model id or directory (e.g. facebook/wav2vec2-base-960h)"
    )
    parser.add_argument(
        "--text-column", default="transcription", help="transcript column (MuST-C files: sentence)"
    )
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--limit", type=int, default=None, help="align only the first N rows (the rest get null)"
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first row that cannot be aligned")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        counts = align_parquet(
            args.parquet,
            args.out,
            args.model,
            text_column=args.text_column,
            audio_column=args.audio_column,
            device=args.device,
            strict=args.strict,
            limit=args.limit,
        )
    except AlignmentInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
