from __future__ import annotations

import numpy as np
import pytest

from llava.dataset.interleave import InterleaveOptions, cut_audio, interleave, plan_spans
from llava.dataset.seeding import stable_rng

SR = 16000


def _utterance(num_words: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(0.15, 0.5, size=num_words)
    gaps = rng.uniform(0.0, 0.1, size=num_words)
    bounds, t = [], 0.05
    for i in range(num_words):
        t += gaps[i]
        bounds.append([round(t, 3), round(t + lengths[i], 3), f"word{i}"])
        t += lengths[i]
    audio = rng.standard_normal(int((t + 0.1) * SR)).astype(np.float32)
    return bounds, audio


@pytest.mark.parametrize("num_words", [1, 2, 5, 13, 40])
@pytest.mark.parametrize("seed", range(8))
def test_plan_invariants(num_words, seed):
    spans = plan_spans(num_words, np.random.default_rng(seed))
    # contiguous, in order, covering every word once
    assert spans[0][1] == 0 and spans[-1][2] == num_words
    assert all(a[2] == b[1] for a, b in zip(spans, spans[1:]))
    # alternating modalities and span lengths within range (only the last may be shorter)
    assert all(a[0] != b[0] for a, b in zip(spans, spans[1:]))
    for modality, i, j in spans[:-1]:
        lo, hi = (4, 10) if modality == "text" else (2, 5)
        assert lo <= j - i <= hi
    assert 1 <= spans[-1][2] - spans[-1][1] <= (10 if spans[-1][0] == "text" else 5)


def test_start_modality_varies():
    starts = {plan_spans(20, np.random.default_rng(s))[0][0] for s in range(30)}
    assert starts == {"text", "audio"}


def test_interleave_words_once_in_order_and_audio_cuts():
    bounds, audio = _utterance(37)
    segments = interleave(bounds, audio, "MuSTC:train:3", InterleaveOptions(seed=1))
    spans = plan_spans(37, stable_rng(1, "interleave", "MuSTC:train:3"))
    assert [k for k, _ in segments] == [m for m, _, _ in spans]
    words = []
    for (kind, value), (_, i, j) in zip(segments, spans):
        if kind == "text":
            assert value.split() == [w for _, _, w in bounds[i:j]]
        else:
            start, end = bounds[i][0], bounds[j - 1][1]
            a, b = int(np.floor(start * SR)), int(np.ceil(end * SR))
            np.testing.assert_array_equal(value, audio[a:b])  # the cut spans first start .. last end
        words += [w for _, _, w in bounds[i:j]]
    assert words == [w for _, _, w in bounds]


def test_reproducible_per_sample_id():
    bounds, audio = _utterance(30)
    opts = InterleaveOptions(seed=5)
    a = interleave(bounds, audio, "id-1", opts)
    b = interleave(bounds, audio, "id-1", opts)
    assert [k for k, _ in a] == [k for k, _ in b]
    assert all(np.array_equal(x, y) if k == "audio" else x == y for (k, x), (_, y) in zip(a, b))
    layouts = {tuple(k for k, _ in interleave(bounds, audio, f"id-{i}", opts)) for i in range(20)}
    assert len(layouts) > 1


def test_short_speech_cut_is_widened_inside_the_waveform():
    audio = np.arange(16000, dtype=np.float32)
    cut = cut_audio(audio, 0.5, 0.501, SR, min_samples=400)
    assert len(cut) == 400 and cut[0] <= 8000 <= cut[-1]
    assert len(cut_audio(audio, 0.0, 0.0, SR, min_samples=400)) == 400
    edge = cut_audio(audio, 0.999, 1.0, SR, min_samples=400)
    assert len(edge) == 400 and edge[-1] == 15999
    assert len(cut_audio(audio[:100], 0.0, 0.001, SR, min_samples=400)) == 100


def test_bad_ranges():
    with pytest.raises(ValueError):
        plan_spans(5, np.random.default_rng(0), text_words=(0, 3))


def _reference_labels(num_words: int, rng: np.random.Generator) -> list[str]:
    """An independent per-word reading of the original's rules (text 4-10, speech 2-5 words)."""
    labels: list[str] = []
    modality = "text" if rng.random() < 0.5 else "audio"
    while len(labels) < num_words:
        remaining = num_words - len(labels)
        if remaining < 6:
            final = "audio" if labels and labels[-1] == "text" else "text"
            return labels + [final] * remaining
        lo, hi = (4, 10) if modality == "text" else (2, 5)
        labels += [modality] * int(rng.integers(lo, min(hi, remaining) + 1))
        modality = "audio" if modality == "text" else "text"
    return labels


@pytest.mark.parametrize("num_words", [1, 5, 6, 7, 11, 12, 40])
def test_spans_follow_the_original_rules(num_words):
    for seed in range(40):
        spans = plan_spans(num_words, np.random.default_rng(seed))
        labels = [m for m, i, j in spans for _ in range(i, j)]
        assert labels == _reference_labels(num_words, np.random.default_rng(seed))
        lengths = [(m, j - i) for m, i, j in spans]
        for m, n in lengths[:-1]:  # every span but the last is within its range
            assert (4 <= n <= 10) if m == "text" else (2 <= n <= 5)


def test_short_utterances_stay_text():
    speech = 0
    for k in range(2000):
        n = 1 + k % 5  # 1..5 words
        spans = plan_spans(n, stable_rng(42, "interleave", f"utt{k}"))
        speech += sum(1 for m, _, _ in spans if m == "audio")
        assert spans == [("text", 0, n)]
    assert speech == 0
