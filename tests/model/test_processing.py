"""SpeechLlavaProcessor: the `<audio>` length rule against the model, expansion, padding, resampling,
errors, and its save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from llava.dataset.audio import resample
from llava.model import build_model
from llava.model.processing import AudioTokenRule, SpeechLlavaProcessor
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config

PROJECTORS = {"qformer": TINY_QFORMER, "mlp": {"stack": 5}, "linear": {"stack": 3}}


def _model(tokenizer, encoder="hubert", projector="qformer"):
    model, tok = build_model(
        tiny_encoder_config(encoder),
        tiny_llm_config(),
        tokenizer=tokenizer,
        projector_type=projector,
        projector_config=PROJECTORS[projector],
        attn_implementation="eager",
    )
    return model, tok


@pytest.mark.parametrize("encoder", ["hubert", "wav2vec2", "wavlm", "whisper"])
@pytest.mark.parametrize("projector", sorted(PROJECTORS))
def test_rule_counts_what_the_model_counts(tiny_tokenizer, encoder, projector):
    model, _ = _model(tiny_tokenizer, encoder, projector)
    rule = AudioTokenRule.from_model(model)
    limit = rule.max_samples or 16000 * 12
    rng = np.random.default_rng(0)
    for n in [*rng.integers(400, limit, 60).tolist(), 400, 401, limit]:
        assert rule(n) == int(model.num_audio_tokens(int(n))), n
    assert AudioTokenRule.from_dict(rule.to_dict()) == rule
    if encoder == "whisper":
        assert rule.max_samples == model.audio_tower.max_samples


def test_rule_fields_are_checked():
    with pytest.raises(ValueError, match="conv_kernel and conv_stride"):
        AudioTokenRule(conv_kernel=(10, 3), conv_stride=(5,))
    with pytest.raises(ValueError, match="samples_per_frame"):
        AudioTokenRule()
    with pytest.raises(ValueError, match="unknown fields"):
        AudioTokenRule.from_dict({"conv_kernel": [10], "conv_stride": [5], "window": 3})


@pytest.fixture(scope="module")
def model_and_processor(tiny_tokenizer):
    model, tok = _model(tiny_tokenizer)
    return model, SpeechLlavaProcessor.from_model(model, tok)


def test_each_placeholder_becomes_its_waveforms_run(model_and_processor):
    model, proc = model_and_processor
    tok, audio_id = proc.tokenizer, proc.audio_token_id
    waves = [np.full(n, 0.1, np.float32) for n in (16000, 4000, 9000)]
    texts = ["first <audio> then <audio>", "no audio here", "last<audio>"]
    out = proc(text=texts, audio=waves, padding_side="right")
    assert out["audio_lengths"].tolist() == [16000, 4000, 9000]
    assert out["audio_values"].shape == (3, 16000) and out["audio_values"][1, 4000:].abs().sum() == 0
    expected = []
    runs = iter(waves)
    for t in texts:
        row = []
        for token in tok(t, add_special_tokens=False)["input_ids"]:
            row += [audio_id] * model.num_audio_tokens(len(next(runs))) if token == audio_id else [token]
        expected.append(row)
    for i, row in enumerate(expected):
        assert out["input_ids"][i, : len(row)].tolist() == row  # right padded
        assert out["attention_mask"][i].sum() == len(row)
        assert (out["input_ids"][i, len(row) :] == tok.pad_token_id).all()
    left = proc(text=texts, audio=waves)  # left padding by default (generation)
    assert left["input_ids"][1, -len(expected[1]) :].tolist() == expected[1]
    assert "audio_values" not in proc(text="just text")
    # One prompt with one waveform needs no lists; plain lists and tensors are waveforms too.
    single = proc(text="x <audio>", audio=torch.from_numpy(waves[1]))
    assert torch.equal(single["input_ids"], proc(text=["x <audio>"], audio=[waves[1].tolist()])["input_ids"])


def test_other_sampling_rates_are_resampled(model_and_processor):
    _, proc = model_and_processor
    wave = np.sin(np.linspace(0, 200, 8000)).astype(np.float32)
    out = proc(text="<audio>", audio=wave, sampling_rate=8000)
    want = resample(wave, 8000, 16000)
    assert out["audio_lengths"].tolist() == [len(want)]
    assert torch.allclose(out["audio_values"][0], torch.from_numpy(want))


def test_bad_inputs_name_the_problem(model_and_processor, tiny_tokenizer):
    _, proc = model_and_processor
    wave = np.zeros(4000, np.float32)
    with pytest.raises(ValueError, match="2 <audio> placeholder.*1 waveform"):
        proc(text="<audio> <audio>", audio=wave)
    with pytest.raises(ValueError, match="0 <audio> placeholder.*1 waveform"):
        proc(text="nothing", audio=wave)
    with pytest.raises(ValueError, match=r"mono waveform \[S\], got shape \(2, 4000\)"):
        proc(text="<audio>", audio=[np.zeros((2, 4000), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        proc(text="<audio>", audio=np.full(100, np.nan, np.float32))
    with pytest.raises(ValueError, match="empty"):
        proc(text="<audio>", audio=[np.zeros(0, np.float32)])
    with pytest.raises(TypeError, match="unexpected arguments"):
        proc(text="<audio>", audio=wave, images=[1])
    whisper, tok = _model(tiny_tokenizer, "whisper")
    wproc = SpeechLlavaProcessor.from_model(whisper, tok)
    with pytest.raises(ValueError, match="longer than the encoder's window of 2.00 s"):
        wproc(text="<audio>", audio=np.zeros(16000 * 3, np.float32))


def test_save_and_load_round_trip(model_and_processor, tmp_path):
    model, proc = model_and_processor
    model.config.save_pretrained(tmp_path)  # AutoProcessor finds the class through the config
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SpeechLlavaProcessor
    assert loaded.rule == proc.rule and loaded.audio_token_id == proc.audio_token_id
    assert loaded.chat_template == proc.tokenizer.chat_template
    waves = [np.full(n, 0.2, np.float32) for n in (12000, 3000)]
    a, b = (
        proc(text=["<audio> a", "b <audio>"], audio=waves),
        loaded(text=["<audio> a", "b <audio>"], audio=waves),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
