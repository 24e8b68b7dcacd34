"""Loading for inference: dtype names, a bad checkpoint fails at load, the feature cache attaches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llava.inference.loading import load_model, resolve_dtype


def test_resolve_dtype():
    assert resolve_dtype("float32", "cpu") is None
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is None  # fp32 on a CPU
    with pytest.raises(ValueError, match="--dtype 'half'"):
        resolve_dtype("half", "cpu")


def test_out_of_range_encoder_layer_fails_at_load(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["encoder_layer"] = 7  # the tiny encoder has 2 layers: hidden states 0..2
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"encoder_layer = 7 is out of range .* 2-layer"):
        load_model(ckpt)


def test_load_model_with_feature_cache(tiny_checkpoint, tmp_path):
    model, tok = load_model(tiny_checkpoint, dtype="float32", audio_feature_cache=tmp_path / "cache")
    assert not model.training and model.audio_tower.feature_cache is not None
    assert all(not p.requires_grad for p in model.parameters())
    plain, _ = load_model(tiny_checkpoint)
    assert plain.audio_tower.feature_cache is None
