"""From text to a 16 kHz waveform with word boundaries `[[start, end, word], ...]` (seconds).

espeak-ng reports when each word starts. A word's span runs to the next word's start (or to the end
of the audio), and pauses (commas, sentence ends) fall at the end of that span: espeak-ng places the
word event at the onset of the word's sound. So each word ends at the last non-silent 10 ms frame
of its span, found by frame energy relative to the loudest frame of the utterance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llava.dataset.audio import resample
from llava.demo.corpus.espeak import PhonemeEvent, WordEvent, get_espeak

SAMPLING_RATE = 16000
FRAME_SECONDS = 0.01
# Frames quieter than this (relative to the loudest frame) count as silence. espeak-ng's pauses are
# digital silence (< -70 dB), word-internal stop closures stay above about -45 dB.
SILENCE_DB = -50.0

_TOKEN = re.compile(r"\S+")


@dataclass
class SpokenText:
    """A synthesised utterance."""

    text: str
    audio: np.ndarray  # [S] float32 mono at `sampling_rate`
    sampling_rate: int
    word_boundaries: list[list]  # [[start_s, end_s, word], ...], one per whitespace token of `text`
    merged_words: int  # tokens espeak-ng spoke within a neighbour's word event (timed by phonemes)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sampling_rate


def tokens_with_offsets(text: str) -> list[tuple[int, int, str]]:
    """Whitespace tokens of `text` as (char_start, char_end, token)."""
    return [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]


def _token_index(tokens: list[tuple[int, int, str]], char_pos: int) -> int:
    """Index of the token containing `char_pos` (or the first token after it)."""
    for i, (_, end, _) in enumerate(tokens):
        if char_pos < end:
            return i
    return len(tokens)


def token_starts(
    tokens: list[tuple[int, int, str]],
    words: list[WordEvent],
    phonemes: list[PhonemeEvent],
    phoneme_counts: Callable[[list[str]], list[int]],
    duration: float,
) -> tuple[list[float], int]:
    """Start time (s) of every token, from espeak-ng's word and phoneme events.

    espeak-ng merges some short words into one spoken unit with a single word event ("in the",
    "there are"). The phonemes of such a unit are shared out among its tokens in proportion to the
    phonemes each token has on its own (`phoneme_counts`), and a token starts at its first phoneme.
    Tokens before the first event get starts interpolated by character position. Returns
    (non-decreasing starts, number of tokens without a word event of their own).
    """
    n = len(tokens)
    starts: list[float | None] = [None] * n
    anchored = []  # (token index, word event), in text order
    for ev in sorted(words, key=lambda e: e.char_start):
        ti = _token_index(tokens, ev.char_start)
        if ti < n and (not anchored or anchored[-1][0] != ti):
            anchored.append((ti, ev))
    for k, (ti, ev) in enumerate(anchored):
        starts[ti] = ev.start
        stop = anchored[k + 1][0] if k + 1 < len(anchored) else n
        group = list(range(ti, stop))
        if len(group) == 1:
            continue
        unit = [p for p in phonemes if p.char_start == ev.char_start]
        if not unit:
            continue
        counts = phoneme_counts([tokens[j][2] for j in group])
        total, cum, prev = sum(counts), 0, 0
        for j, c in zip(group, counts):
            idx = round(cum * len(unit) / total)
            if j != ti:
                idx = max(idx, prev + 1)  # every token gets at least one phoneme of its own
                if idx < len(unit):
                    starts[j] = unit[idx].start
            prev = idx
            cum += c
    missing = n - len(anchored)
    if any(s is None for s in starts):
        known = [(tokens[i][0], s) for i, s in enumerate(starts) if s is not None]
        xs = [0.0] + [float(x) for x, _ in known] + [float(tokens[-1][1])]
        ts = [0.0] + [t for _, t in known] + [duration]
        for i, s in enumerate(starts):
            if s is None:
                starts[i] = float(np.interp(tokens[i][0], xs, ts))
    out: list[float] = []
    for s in starts:
        out.append(min(max(float(s), out[-1] if out else 0.0), duration))
    return out, missing


def frame_activity(wave: np.ndarray, sampling_rate: int, silence_db: float = SILENCE_DB) -> np.ndarray:
    """[F] bool: whether each 10 ms frame is louder than `silence_db` relative to the loudest frame."""
    hop = max(1, int(round(FRAME_SECONDS * sampling_rate)))
    n_frames = int(np.ceil(len(wave) / hop))
    if n_frames == 0:
        return np.zeros(0, dtype=bool)
    padded = np.zeros(n_frames * hop, dtype=np.float64)
    padded[: len(wave)] = wave
    rms = np.sqrt((padded.reshape(n_frames, hop) ** 2).mean(axis=1))  # [F]
    peak = float(rms.max())
    if peak <= 0.0:
        return np.zeros(n_frames, dtype=bool)
    return rms > peak * 10.0 ** (silence_db / 20.0)


def word_boundaries(
    tokens: list[tuple[int, int, str]], starts: list[float], active: np.ndarray, duration: float
) -> list[list]:
    """[[start, end, word], ...]: each word from its start to the last active frame before the next start."""
    bounds: list[list] = []
    for i, (_, _, word) in enumerate(tokens):
        start = starts[i]
        limit = starts[i + 1] if i + 1 < len(tokens) else duration
        end = limit
        f0 = int(np.floor(start / FRAME_SECONDS))
        f1 = min(int(np.ceil(limit / FRAME_SECONDS)), len(active))
        idx = np.flatnonzero(active[f0:f1]) if f1 > f0 else np.zeros(0, dtype=int)
        if idx.size:
            end = min(limit, (f0 + int(idx[-1]) + 1) * FRAME_SECONDS)
        if end <= start:  # no sound of its own: keep the whole (possibly empty) span
            end = max(start, limit)
        bounds.append([round(start, 3), round(end, 3), word])
    # Milliseconds, never past the end of the audio.
    last_ms = float(np.floor(duration * 1000.0)) / 1000.0
    return [[min(s, last_ms), min(e, last_ms), w] for s, e, w in bounds]


def speak(
    text: str, voice: str, rate: int, pitch: int, seed: int, sampling_rate: int = SAMPLING_RATE
) -> SpokenText:
    """Synthesise `text` and derive its word boundaries; deterministic in all arguments."""
    espeak = get_espeak()
    syn = espeak.synthesize(text, voice=voice, rate=rate, pitch=pitch, seed=seed)
    wave = syn.samples.astype(np.float32) / 32768.0
    wave = resample(wave, syn.sampling_rate, sampling_rate)
    wave = np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)
    duration = len(wave) / sampling_rate
    tokens = tokens_with_offsets(text)
    starts, missing = token_starts(
        tokens, syn.words, syn.phonemes, lambda ws: espeak.phoneme_counts(ws, voice), duration
    )
    active = frame_activity(wave, sampling_rate)
    bounds = word_boundaries(tokens, starts, active, duration)
    return SpokenText(
        text=text, audio=wave, sampling_rate=sampling_rate, word_boundaries=bounds, merged_words=missing
    )
