"""Building, freezing and loading: layer checks, partial projector initialisation."""

from __future__ import annotations

import logging

import pytest
import torch

from llava.model import LoraSettings, apply_training_mode, build_model, save_trainable
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


def _lora_modules(root):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in root.named_modules() if isinstance(m, LoraLayer)}


def test_lora_settings_per_component(tiny_base_dirs):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    llm = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="q_proj, v_proj")
    enc = LoraSettings(r=2, alpha=3, dropout=0.1, target_modules=["k_proj"], bias="all", use_rslora=True)
    apply_training_mode(model, lora_llm=llm, lora_encoder=enc)
    llm_layers = _lora_modules(model.language_model)
    enc_layers = _lora_modules(model.audio_tower)
    assert {n.rsplit(".", 1)[-1] for n in llm_layers} == {"q_proj", "v_proj"}
    assert {n.rsplit(".", 1)[-1] for n in enc_layers} == {"k_proj"}
    for m in llm_layers.values():
        assert m.r["default"] == 4 and m.scaling["default"] == 8 / 4
        assert m.lora_dropout["default"].__class__.__name__ == "Identity"
    for m in enc_layers.values():
        assert m.r["default"] == 2 and m.scaling["default"] == pytest.approx(3 / 2**0.5)  # rsLoRA
        assert m.lora_dropout["default"].p == 0.1
    # bias="all" trains every encoder bias; the LLM's LoRA (bias="none") trains only adapters.
    enc_trainable = {n for n, p in model.audio_tower.named_parameters() if p.requires_grad}
    enc_biases = {n for n, _ in model.audio_tower.named_parameters() if n.endswith(".bias")}
    assert enc_biases and enc_biases <= enc_trainable
    assert all("lora_" in n for n, p in model.language_model.named_parameters() if p.requires_grad)
    assert model.config.lora["llm"]["r"] == 4 and model.config.lora["encoder"]["use_rslora"] is True
    assert model.config.lora["encoder"]["target_modules"] == ["k_proj"]


def test_lora_all_linear_adapts_every_linear_layer_but_the_output_head(tiny_base_dirs):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    linear = {
        n.rsplit(".", 1)[-1]
        for n, m in model.language_model.named_modules()
        if isinstance(m, torch.nn.Linear) and "layers." in n
    }
    apply_training_mode(model, lora_llm=LoraSettings(r=2, target_modules="all-linear"))
    adapted = _lora_modules(model.language_model)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == linear  # q, k, v, o, gate, up, down
    assert len(linear) == 7 and not any(n.endswith("lm_head") for n in adapted)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lora_llm=LoraSettings(target_modules=["q_proj", "qkv"])), r"--lora_target_modules: \['qkv'\]"),
        (
            dict(lora_encoder=LoraSettings(target_modules=["gate_proj"])),
            r"--encoder_lora_target_modules: \['gate",
        ),
    ],
)
def test_lora_target_matching_no_module_names_the_flag(tiny_base_dirs, kwargs, match):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    flags = {"lora_llm": "--lora_target_modules", "lora_encoder": "--encoder_lora_target_modules"}
    with pytest.raises(ValueError, match=match):
        apply_training_mode(model, flags=flags, **kwargs)


def test_lora_settings_validate_their_fields():
    with pytest.raises(ValueError, match="bias 'some'"):
        LoraSettings(bias="some")
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(r=0)


def test_freeze_list_by_module_name_and_path(tiny_base_dirs):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    apply_training_mode(
        model,
        lora_llm=LoraSettings(r=2, dropout=0.0),
        freeze=["language_model.model.layers.0", "projector.queries", " "],
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert {n for n in lora if ".layers.0." in n}.isdisjoint(trainable)  # path through the LoRA wrapper
    assert {n for n in lora if ".layers.1." in n} <= trainable
    assert "projector.queries" not in trainable
    assert any(n.startswith("projector.") for n in trainable)


def test_freeze_list_top_level_components(tiny_base_dirs):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    apply_training_mode(
        model,
        freeze_encoder=False,
        freeze_llm=False,
        lora_encoder=LoraSettings(r=2, target_modules=["q_proj"]),
        freeze=["audio_tower", "language_model"],
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") for n in trainable)
    assert model.audio_tower.frozen  # pinned to eval mode like any frozen encoder
    model.train()
    assert not model.audio_tower.model.training


def test_freeze_name_matching_nothing_names_the_flag(tiny_base_dirs):
    model, _ = build_model(*map(str, tiny_base_dirs), projector_config=QFORMER)
    with pytest.raises(ValueError, match=r"--freeze_modules: 'llm' matches no module.*'language_model'"):
        apply_training_mode(model, freeze=["llm"], flags={"freeze": "--freeze_modules"})
