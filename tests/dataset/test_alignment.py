"""CTC forced alignment: Viterbi against brute force, word grouping, seconds, and the parquet CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava.dataset.alignment import (
    AlignmentError,
    CharVocabulary,
    align_transcript,
    ctc_viterbi,
    main,
    transcript_targets,
)
from tests.conftest import tiny_encoder_config

BLANK = 0


def _brute_force(log_probs: np.ndarray, targets: list[int]):
    """Best frame-label path that collapses to `targets` (merge repeats, drop blanks), by enumeration."""
    n_frames, vocab = log_probs.shape
    best_score, best_path = -np.inf, None
    for path in itertools.product(range(vocab), repeat=n_frames):
        collapsed = [lab for i, lab in enumerate(path) if lab != BLANK and (i == 0 or lab != path[i - 1])]
        if collapsed != targets:
            continue
        score = float(sum(log_probs[t, lab] for t, lab in enumerate(path)))
        if score > best_score:
            best_score, best_path = score, path
    spans: list[list[int]] = []
    for t, lab in enumerate(best_path):
        if lab == BLANK:
            continue
        if t > 0 and best_path[t - 1] == lab:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [tuple(s) for s in spans], best_score


def _random_log_probs(rng, n_frames, vocab):
    logits = rng.normal(size=(n_frames, vocab)) * 2.0
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("targets", [[1], [1, 2], [1, 1], [2, 1, 2], [1, 2, 2], [3, 3, 3]])
def test_viterbi_matches_brute_force(targets):
    rng = np.random.default_rng(len(targets) * 10 + targets[0])
    n_frames = 7 if len(targets) < 3 else 6
    for _ in range(3):
        log_probs = _random_log_probs(rng, n_frames, 4)
        spans, score = ctc_viterbi(log_probs, targets, blank=BLANK)
        ref_spans, ref_score = _brute_force(log_probs, targets)
        assert score == pytest.approx(ref_score, abs=1e-9)
        assert spans == ref_spans


def test_viterbi_recovers_a_constructed_path():
    # 0 = blank, 1 = a, 2 = b; the intended path is  _ a a _ _ b b _  ("ab").
    path = [0, 1, 1, 0, 0, 2, 2, 0]
    log_probs = np.full((len(path), 3), np.log(0.05))
    log_probs[np.arange(len(path)), path] = np.log(0.9)
    spans, score = ctc_viterbi(log_probs, [1, 2], blank=0)
    assert spans == [(1, 2), (5, 6)]
    assert score == pytest.approx(len(path) * np.log(0.9))


def test_viterbi_rejects_too_few_frames():
    with pytest.raises(AlignmentError):
        ctc_viterbi(np.zeros((2, 3)), [1, 1], blank=0)  # a repeat needs a blank between: 3 frames


def _vocab(upper=True):
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'" if upper else "abcdefghijklmnopqrstuvwxyz'"
    tokens = {"<pad>": 0, "|": 1}
    tokens.update({c: i + 2 for i, c in enumerate(letters)})
    return CharVocabulary(token_to_id=tokens, blank_id=0, delimiter="|")


def test_transcript_targets_normalise_to_the_vocabulary():
    ids, owner, words = transcript_targets("Hi, yo & Al!", _vocab(upper=True))
    v = _vocab().token_to_id
    assert ids == [v["H"], v["I"], v["|"], v["Y"], v["O"], v["|"], v["A"], v["L"]]
    assert owner == [0, 0, -1, 1, 1, -1, 3, 3]  # "&" has no spellable character
    assert words == ["Hi,", "yo", "&", "Al!"]
    ids_lower, _, _ = transcript_targets("Hi", _vocab(upper=False))
    assert ids_lower == [_vocab(False).token_to_id["h"], _vocab(False).token_to_id["i"]]


def test_words_and_seconds_from_a_constructed_path():
    vocab = _vocab()
    v = vocab.token_to_id
    # frames:  0 1 2 3 4 5 6 7 8 9
    # labels:  _ H I | | _ Y O O _     ("Hi," then "yo"; "&" has nothing to align)
    path = [0, v["H"], v["I"], v["|"], v["|"], 0, v["Y"], v["O"], v["O"], 0]
    log_probs = np.full((len(path), len(v)), np.log(1e-3))
    log_probs[np.arange(len(path)), path] = np.log(0.9)
    bounds = align_transcript(log_probs, "Hi, & yo", vocab, frame_stride=0.02, duration=0.2)
    assert bounds == [[0.02, 0.06, "Hi,"], [0.06, 0.12, "&"], [0.12, 0.18, "yo"]]


def test_align_transcript_errors():
    with pytest.raises(AlignmentError):
        align_transcript(np.zeros((10, 29)), "   ", _vocab(), 0.02)
    with pytest.raises(AlignmentError):
        align_transcript(np.zeros((10, 29)), "123", _vocab(), 0.02)


# ----------------------------------------------------------------------------- CLI on a tiny model
@pytest.fixture(scope="module")
def tiny_ctc_model(tmp_path_factory):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    root = tmp_path_factory.mktemp("ctc")
    vocab = _vocab().token_to_id
    (root / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(root / "vocab.json"), pad_token="<pad>", unk_token="<pad>", word_delimiter_token="|"
    )
    settings = {
        **tiny_encoder_config("wav2vec2"),
        "mask_time_prob": 0.0,
        "vocab_size": len(vocab),
        "pad_token_id": 0,
    }
    settings.pop("model_type")
    config = Wav2Vec2Config(**settings)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(root)
    return root


def test_cli_adds_monotone_in_range_word_boundaries(tmp_path, tiny_ctc_model):
    from llava.dataset.audio import encode_audio

    rng = np.random.default_rng(0)
    texts = ["Hello there world.", "the cat's hat", "", "Good"]
    durations = [1.5, 1.0, 1.0, 0.6]
    rows = []
    for i, (text, dur) in enumerate(zip(texts, durations)):
        sr = 22050 if i == 1 else 16000  # one file needs resampling
        wave = (0.1 * rng.standard_normal(int(dur * sr))).astype(np.float32)
        rows.append(
            {
                "audio": encode_audio(wave, sr, "flac", path=f"{i}.flac"),
                "transcription": text,
                "duration": dur,
            }
        )
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out" / "aligned.parquet"
    assert main(["--parquet", str(src), "--out", str(out), "--model", str(tiny_ctc_model)]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["audio", "transcription", "duration", "word_boundaries"]
    values = table.column("word_boundaries").to_pylist()
    assert values[2] is None  # empty transcript: kept, not aligned
    for text, dur, value in zip(texts, durations, values):
        if not text:
            continue
        bounds = json.loads(value)
        assert [w for _, _, w in bounds] == text.split()
        prev_end = 0.0
        for start, end, _ in bounds:
            assert prev_end <= start < end <= dur + 1e-6
            prev_end = end


def test_cli_missing_column_is_a_clear_error_before_loading_a_model(tmp_path, capsys):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"audio": b"x", "sentence": "hi"}]), src)
    out = tmp_path / "out.parquet"
    # the model path does not exist: the column check must come first
    argv = ["--parquet", str(src), "--out", str(out), "--model", str(tmp_path / "no-model")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "in.parquet: no column 'transcription' (--text-column); columns: ['audio', 'sentence']" in err
    assert not out.exists()
    assert main([*argv[:4], "--model", "x", "--parquet", str(tmp_path / "none.parquet")]) == 2
    assert "cannot read parquet file" in capsys.readouterr().err
