"""Building, freezing and loading: layer checks, partial projector initialisation."""

from __future__ import annotations

import logging

import pytest
import torch

from llava.model import apply_training_mode, build_model, save_trainable
from llava.model.builder import check_encoder_layer, encoder_num_layers, load_projector

QFORMER = dict(num_queries=2, num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)


def _model(base_dirs, **qformer):
    model, tok = build_model(*map(str, base_dirs), projector_config={**QFORMER, **qformer})
    apply_training_mode(model)
    return model


@pytest.mark.parametrize("layer", [-3, -1, 0, 2])
def test_encoder_layers_in_range_build(tiny_base_dirs, layer):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER, encoder_layer=layer)
    feats, _ = model.audio_tower(torch.randn(1, 8000), torch.tensor([8000]))
    assert feats.shape[-1] == model.audio_tower.hidden_size


@pytest.mark.parametrize("layer", [3, -4, 25])
def test_out_of_range_encoder_layer_fails_at_build(tiny_base_dirs, layer):
    with pytest.raises(ValueError, match=rf"mm_speech_select_layer\) = {layer} is out of range.*-3\.\.2"):
        build_model(*map(str, tiny_base_dirs), projector_config=QFORMER, encoder_layer=layer)


def test_encoder_num_layers_reads_whisper_and_hubert_configs():
    from transformers import HubertConfig, WhisperConfig

    assert encoder_num_layers(HubertConfig(num_hidden_layers=3)) == 3
    assert encoder_num_layers(WhisperConfig(encoder_layers=5, decoder_layers=1)) == 5
    with pytest.raises(ValueError, match="-6..5"):
        check_encoder_layer(6, WhisperConfig(encoder_layers=5, decoder_layers=1), "layer")


def test_projector_from_a_checkpoint_with_fewer_layers_is_an_error(tmp_path, tiny_base_dirs):
    stage1 = _model(tiny_base_dirs, num_layers=1)
    ckpt = save_trainable(stage1, tmp_path / "stage1")
    stage2 = _model(tiny_base_dirs, num_layers=2)
    with pytest.raises(
        ValueError, match=r"lacks \d+ of the projector's \d+ tensors.*allow_partial_projector_init"
    ):
        load_projector(stage2, ckpt)


def test_partial_projector_init_logs_exactly_the_random_tensors(tmp_path, tiny_base_dirs, caplog):
    stage1 = _model(tiny_base_dirs, num_layers=1)
    ckpt = save_trainable(stage1, tmp_path / "stage1")
    stage2 = _model(tiny_base_dirs, num_layers=2)
    before = {k: v.clone() for k, v in stage2.trainable_state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="llava.model.builder"):
        missing = load_projector(stage2, ckpt, allow_partial=True)
    saved = stage1.trainable_state_dict()
    # Independent count: the names stage 2 has and stage 1 does not.
    assert missing == sorted(set(before) - set(saved)) and missing
    assert all(".1." in k for k in missing)  # exactly the second Q-Former layer
    after = stage2.trainable_state_dict()
    assert all(torch.equal(after[k], before[k]) for k in missing)
    assert all(torch.equal(after[k], saved[k]) for k in saved)
    message = caplog.records[-1].getMessage()
    assert f"{len(missing)} of {len(before)} tensors stay random" in message
    assert all(k in message for k in missing)


def test_complete_projector_checkpoint_loads_silently(tmp_path, tiny_base_dirs, caplog):
    src = _model(tiny_base_dirs)
    ckpt = save_trainable(src, tmp_path / "c")
    dst = _model(tiny_base_dirs)
    with caplog.at_level(logging.WARNING, logger="llava.model.builder"):
        assert load_projector(dst, ckpt) == []
    assert not caplog.records
    for k, v in src.trainable_state_dict().items():
        assert torch.equal(dst.trainable_state_dict()[k], v)
