"""The speech-encoder wrapper: encoder families, feature extraction, frame counts and masks, frozen mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, Wav2Vec2FeatureExtractor

from llava.model.encoders import ENCODER_KINDS, AudioEncoder, default_feature_extractor, encoder_kind
from tests.conftest import tiny_encoder_config

KINDS = ("hubert", "wav2vec2", "wavlm", "whisper")


def _config(kind: str, **changes):
    cfg = {**tiny_encoder_config(kind), **changes}
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _encoder(kind: str, layer: int = -1, **changes) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder.from_config(_config(kind, **changes), layer=layer, attn_implementation="eager").eval()


def test_encoder_kind_of_every_family_and_unknown_ones_listed():
    assert sorted(ENCODER_KINDS) == sorted(KINDS)
    assert encoder_kind(_config("whisper")).whisper and not encoder_kind(_config("hubert")).whisper
    assert not encoder_kind(_config("wavlm")).sdpa  # WavLM has no SDPA attention
    with pytest.raises(ValueError, match=r"unsupported audio encoder type 'bert'; known: \['hubert'"):
        encoder_kind(AutoConfig.for_model("bert"))


def test_default_feature_extractor_follows_the_config():
    # Layer-norm feature encoders are trained with attention masks, group-norm ones without.
    assert default_feature_extractor(_config("hubert")).return_attention_mask
    assert not default_feature_extractor(_config("hubert", feat_extract_norm="group")).return_attention_mask
    fe = default_feature_extractor(_config("whisper"))  # max_source_positions 100: a 2 s window
    assert (fe.feature_size, fe.n_samples, fe.nb_max_frames) == (16, 32000, 200)


def test_sdpa_falls_back_to_eager_where_the_family_has_none():
    wavlm = AudioEncoder.from_config(_config("wavlm"), attn_implementation="sdpa")
    assert wavlm.model.config._attn_implementation == "eager"
    hubert = AudioEncoder.from_config(_config("hubert"), attn_implementation="sdpa")
    assert hubert.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", KINDS)
def test_frame_mask_counts_the_frames_of_each_utterance_alone(kind):
    enc = _encoder(kind)
    assert enc.sampling_rate == 16000 and enc.frame_rate == 50.0
    lengths = [16000, 8000, 3000]
    values = torch.zeros(3, 16000)
    for i, n in enumerate(lengths):
        values[i, :n] = torch.randn(n) * 0.1
    with torch.no_grad():
        feats, mask = enc(values, torch.tensor(lengths))
    assert feats.shape[:2] == mask.shape and feats.shape[2] == enc.hidden_size
    assert mask.sum(1).tolist() == enc.frame_lengths(torch.tensor(lengths)).tolist()
    if kind == "whisper":  # ceil(n / 320) frames of the fixed 100-frame window
        assert mask.sum(1).tolist() == [50, 25, 10] and feats.shape[1] == enc.output_frames(3000) == 100
    else:  # the conv stack: 400-sample receptive field, 320-sample stride
        assert mask.sum(1).tolist() == [(n - 400) // 320 + 1 for n in lengths]
        with torch.no_grad():  # the unpadded utterance alone has exactly that many frames
            alone, _ = enc(values[2:, :3000], torch.tensor([3000]))
        assert alone.shape[1] == int(mask[2].sum()) == enc.output_frames(3000)


def test_featurize_normalises_valid_samples_like_the_hf_extractor():
    enc = _encoder("hubert")
    wave = (np.random.default_rng(0).standard_normal(5000) * 0.3 + 0.2).astype(np.float32)
    padded = torch.zeros(1, 9000)
    padded[0, :5000] = torch.from_numpy(wave)
    inputs = enc._featurize(padded, torch.tensor([5000]))
    ref = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)(
        wave, sampling_rate=16000, return_tensors="pt"
    )
    torch.testing.assert_close(inputs["input_values"][0, :5000], ref.input_values[0], rtol=1e-4, atol=1e-4)
    assert not inputs["input_values"][0, 5000:].any()  # padding stays zero after normalisation
    assert inputs["attention_mask"][0].tolist() == [1] * 5000 + [0] * 4000


def test_layer_selects_that_hidden_state():
    x = torch.randn(1, 8000) * 0.1
    enc = _encoder("hubert", layer=1)
    with torch.no_grad():
        feats, _ = enc(x, torch.tensor([8000]))
        ref = enc.model(**enc._featurize(x, torch.tensor([8000])), output_hidden_states=True).hidden_states[1]
        last, _ = _encoder("hubert")(x, torch.tensor([8000]))
    torch.testing.assert_close(feats, ref)
    assert not torch.allclose(feats, last)


def test_audio_longer_than_the_whisper_window_is_refused():
    enc = _encoder("whisper")
    with pytest.raises(
        ValueError, match=r"exceeds the Whisper encoder's fixed window of 32000 samples \(2.0 s\)"
    ):
        enc(torch.zeros(1, 32001), torch.tensor([32001]))


def test_a_frozen_encoder_stays_in_eval_mode_and_builds_no_graph():
    enc = _encoder("hubert")
    enc.train()
    assert enc.model.training  # a trainable encoder follows train()
    enc.frozen = True
    enc.train()
    assert enc.training and not any(m.training for m in enc.model.modules())  # no dropout / SpecAugment
    x = torch.randn(2, 6000) * 0.1
    feats, _ = enc(x, torch.tensor([6000, 6000]))
    assert not feats.requires_grad
    again, _ = enc(x, torch.tensor([6000, 6000]))
    assert torch.equal(feats, again)
