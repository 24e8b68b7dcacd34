from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCTC,
    AutoProcessor,
    HubertForCTC,
    HubertModel,
    Wav2Vec2FeatureExtractor,
)

from llava.demo.base_models.encoder import (
    CTC_VOCAB,
    EncoderTrainArgs,
    _duration_batches,
    build_ctc_processor,
    default_encoder_config,
    normalize_transcript,
    train_tiny_hubert_ctc,
)

SR = 16000
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 32),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Models this small gain nothing from intra-op threads; on a busy CPU the threads wait on each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fake_speech(text: str, seed: int) -> np.ndarray:
    """A tone per letter plus noise: 'speech' whose frames depend on the transcript."""
    rng = np.random.default_rng(seed)
    parts = []
    for ch in text.upper():
        n = int(SR * 0.06)
        t = np.arange(n) / SR
        freq = 200.0 + 40.0 * (ord(ch) % 32)
        parts.append(0.3 * np.sin(2 * np.pi * freq * t) if ch != " " else np.zeros(n))
    wave = np.concatenate(parts) + 0.01 * rng.standard_normal(len(parts) * int(SR * 0.06))
    return wave.astype(np.float32)


TEXTS = ["the cat sat", "a dog ran home", "red book", "it's blue", "go now", "the old man's hat"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    train = [(_fake_speech(t, i), t) for i, t in enumerate(TEXTS * 2)]
    dev = [(_fake_speech(t, 100 + i), t) for i, t in enumerate(TEXTS[:3])]
    args = EncoderTrainArgs(time_budget_s=None, max_steps=4, batch_seconds=2.0, log_every=2)
    report = train_tiny_hubert_ctc(train, dev, out, config=TINY, args=args)
    return out, report


def test_normalize_transcript():
    assert normalize_transcript("Der Bär, ja!") == "DER BAR JA"
    assert normalize_transcript("It's 'quoted' - 21 Straße") == "IT'S QUOTED TWENTY ONE STRASSE"
    assert normalize_transcript("  ...  ") == ""


def test_processor_vocab():
    processor = build_ctc_processor()
    tok = processor.tokenizer
    assert tok.pad_token_id == 0 and len(tok) == len(CTC_VOCAB)
    ids = tok("IT'S A CAT").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["I", "T", "'", "S", "|", "A", "|", "C", "A", "T"]
    # Greedy CTC decoding: repeats collapse, blanks (<pad>) vanish, '|' becomes a space.
    blank, a, sep = 0, tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("|")
    assert tok.decode([a, a, blank, a, sep, a]) == "AA A"


def test_default_config_keeps_hubert_frame_rate():
    cfg = default_encoder_config()
    assert math.prod(cfg.conv_stride) == 320
    assert cfg.layerdrop == 0.0 and cfg.pad_token_id == 0


def test_duration_batches():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(1000, 50000, size=50)) + [200000]
    batches = _duration_batches(lengths, 100000, rng)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # padded size under the cap, except a single over-long utterance
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100000


def test_training_runs_and_reports(trained):
    out, report = trained
    assert report["steps"] == 4
    assert math.isfinite(report["final_train_loss"])
    assert 0.0 <= report["dev_cer"] and report["dev_n"] == 3
    assert json.loads((out / "train_report.json").read_text())["steps"] == 4


def test_saved_dir_loads_like_hubert_ls960_ft(trained):
    out, _ = trained
    model = AutoModel.from_pretrained(str(out))
    assert type(model) is HubertModel  # the CTC head is dropped, as for facebook/hubert-large-ls960-ft
    assert isinstance(AutoModelForCTC.from_pretrained(str(out)), HubertForCTC)
    fe = AutoFeatureExtractor.from_pretrained(str(out))
    assert isinstance(fe, Wav2Vec2FeatureExtractor)
    assert fe.sampling_rate == SR and fe.do_normalize and fe.return_attention_mask
    processor = AutoProcessor.from_pretrained(str(out))
    assert processor.tokenizer.pad_token_id == 0

    model.eval()
    for n in (SR // 3, SR + 123, 2 * SR):
        inputs = fe(np.zeros(n, dtype=np.float32) + 0.1, sampling_rate=SR, return_tensors="pt")
        with torch.no_grad():
            frames = model(**inputs).last_hidden_state.shape[1]
        assert frames == int(model._get_feat_extract_output_lengths(torch.tensor(n)))
        assert abs(frames - n / 320) <= 2  # 50 frames per second


def test_padding_invariance(trained):
    # A layer-norm feature encoder with an attention mask gives the same frames alone or padded in a batch.
    out, _ = trained
    model = AutoModel.from_pretrained(str(out)).eval()
    fe = AutoFeatureExtractor.from_pretrained(str(out))
    short, long = _fake_speech("red book", 7), _fake_speech("the old man's hat", 8)
    with torch.no_grad():
        alone = model(**fe(short, sampling_rate=SR, return_tensors="pt")).last_hidden_state[0]
        batch = fe([short, long], sampling_rate=SR, padding=True, return_tensors="pt")
        padded = model(**batch).last_hidden_state[0, : alone.shape[0]]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_skips_are_counted(tmp_path):
    bad = [
        (np.zeros(0, dtype=np.float32), "empty"),
        (_fake_speech("ok", 1), "!!!"),
        (np.ones(100, np.float32), "too fast"),
    ]
    good = [(_fake_speech("ok go", 2), "ok go")]
    args = EncoderTrainArgs(time_budget_s=None, max_steps=1, batch_seconds=2.0)
    report = train_tiny_hubert_ctc(bad + good, [], tmp_path, config=TINY, args=args)
    assert report["train_skipped"] == {"empty_or_invalid": 2, "too_fast": 1}
    assert report["dev_cer"] is None
    with pytest.raises(ValueError, match="no usable training utterances"):
        train_tiny_hubert_ctc(bad, [], tmp_path / "x", config=TINY, args=args)
