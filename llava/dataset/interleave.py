"""Mixed speech-text sequences from word boundaries (the interleaved NWP pretraining variant).

The words of an utterance are split into consecutive spans that alternate between text (4-10 words)
and speech (2-5 words); the first span's modality is random. The rules are the original's: while at
least 6 words (the two minimum span lengths) remain, a span of the current modality takes a drawn
number of words; fewer remaining words become one final span of the other modality than the span
before it, so an utterance under 6 words stays entirely text. A speech span is the audio between its
first word's start and its last word's end, encoded on its own by encoder + projector. Every word
appears exactly once, in order, in exactly one modality. The draw depends only on (seed, sample id),
so a sample is interleaved the same way in every worker and every rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llava.dataset.audio import DEFAULT_SAMPLING_RATE
from llava.dataset.seeding import stable_rng

TEXT = "text"
AUDIO = "audio"


@dataclass(frozen=True)
class InterleaveOptions:
    """How utterances are cut into alternating text and speech spans."""

    text_words: tuple[int, int] = (4, 10)  # inclusive word-count range of a text span
    speech_words: tuple[int, int] = (2, 5)  # inclusive word-count range of a speech span
    seed: int = 42  # combined with the sample id
    # Speech cuts shorter than this are widened (within the utterance) so the encoder yields at least
    # one frame: 400 samples is the receptive field of HuBERT's convolutional front end at 16 kHz.
    min_speech_samples: int = 400


def plan_spans(
    num_words: int,
    rng: np.random.Generator,
    text_words: tuple[int, int] = (4, 10),
    speech_words: tuple[int, int] = (2, 5),
) -> list[tuple[str, int, int]]:
    """Alternating spans `(modality, first_word, end_word_exclusive)` covering words [0, num_words).

    While at least `text_words[0] + speech_words[0]` words remain, the current modality takes
    `rng.integers(lo, min(hi, remaining) + 1)` words; a smaller remainder becomes one final span of the
    other modality than the previous span (text when there is none), so short utterances stay text.
    """
    for lo, hi in (text_words, speech_words):
        if not 1 <= lo <= hi:
            raise ValueError(f"bad span range {(lo, hi)}")
    spans: list[tuple[str, int, int]] = []
    modality = TEXT if rng.random() < 0.5 else AUDIO
    least = text_words[0] + speech_words[0]  # below this, no text span and speech span both fit
    pos = 0
    while pos < num_words:
        remaining = num_words - pos
        if remaining < least:
            last = spans[-1][0] if spans else None
            spans.append((AUDIO if last == TEXT else TEXT, pos, num_words))
            break
        lo, hi = text_words if modality == TEXT else speech_words
        n = int(rng.integers(lo, min(hi, remaining) + 1))
        spans.append((modality, pos, pos + n))
        pos += n
        modality = AUDIO if modality == TEXT else TEXT
    return spans


def cut_audio(
    audio: np.ndarray, start_s: float, end_s: float, sampling_rate: int, min_samples: int = 0
) -> np.ndarray:
    """Samples between start_s and end_s ([S']), widened to `min_samples` within the waveform."""
    n = len(audio)
    a = min(max(int(math.floor(start_s * sampling_rate)), 0), n)
    b = min(max(int(math.ceil(end_s * sampling_rate)), a), n)
    need = min(min_samples, n)
    if b - a < need:  # widen around the centre, shifted to stay inside the waveform
        a = min(max((a + b - need) // 2, 0), n - need)
        b = a + need
    return audio[a:b]


def interleave(
    word_boundaries: list[list],
    audio: np.ndarray,
    sample_id: str,
    options: InterleaveOptions = InterleaveOptions(),
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
) -> list[tuple[str, Any]]:
    """`[("text", "w1 w2 ..."), ("audio", waveform), ...]` for one utterance (see module docstring)."""
    words = [w for _, _, w in word_boundaries]
    rng = stable_rng(options.seed, "interleave", sample_id)
    segments: list[tuple[str, Any]] = []
    for modality, i, j in plan_spans(len(words), rng, options.text_words, options.speech_words):
        if modality == TEXT:
            segments.append((TEXT, " ".join(words[i:j])))
        else:
            start, end = word_boundaries[i][0], word_boundaries[j - 1][1]
            segments.append((AUDIO, cut_audio(audio, start, end, sampling_rate, options.min_speech_samples)))
    return segments
