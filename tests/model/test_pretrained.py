"""SpeechLlavaForCausalLM as a transformers model: post_init that keeps pretrained weights, the
trainable-only default format (old checkpoints included) and the full format."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from llava.model import (
    LoraSettings,
    SpeechLlavaConfig,
    apply_training_mode,
    build_model,
    load_pretrained_model,
)
from llava.model.encoders import AudioEncoder
from llava.model.modeling import SpeechLlavaForCausalLM
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config
from tests.helpers import speech_batch


def _config(**llm) -> SpeechLlavaConfig:
    return SpeechLlavaConfig(
        audio_config=tiny_encoder_config("hubert"),
        text_config={**tiny_llm_config(), **llm},
        projector_config=TINY_QFORMER,
        audio_token_id=399,
    )


def _logits(model, tok):
    torch.manual_seed(3)
    batch = speech_batch(model, tok, [12000, 8000])
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_post_init_keeps_the_weights_of_given_submodels():
    config = _config()
    lm = AutoModelForCausalLM.from_config(config.text_config)
    tower = AudioEncoder.from_config(config.audio_config)
    with torch.no_grad():  # values no initialiser would produce
        for p in [*lm.parameters(), *tower.parameters()]:
            p.fill_(0.123)
    model = SpeechLlavaForCausalLM(config, audio_tower=tower, language_model=lm)
    for p in [*model.language_model.parameters(), *model.audio_tower.parameters()]:
        assert torch.all(p == 0.123)
    assert {"AudioEncoder", "QFormerProjector", "LlamaDecoderLayer"} <= set(model._no_split_modules)


def test_default_save_is_the_trainable_only_checkpoint(tmp_path, tiny_base_dirs):
    model, tok = build_model(*map(str, tiny_base_dirs), projector_config=TINY_QFORMER)
    apply_training_mode(model)
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["checkpoint_format"] == "trainable"
    for loader in (SpeechLlavaForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path / "ckpt")
        assert type(loaded) is SpeechLlavaForCausalLM and not loaded.training
        torch.testing.assert_close(_logits(loaded, tok), _logits(model, tok), rtol=0, atol=0)


def test_checkpoints_written_before_the_format_field_still_load(tmp_path, tiny_checkpoint):
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    for key in ("checkpoint_format", "audio_feature_extractor"):
        config.pop(key, None)
    (old / "config.json").write_text(json.dumps(config))
    a, tok = load_pretrained_model(old)
    b = SpeechLlavaForCausalLM.from_pretrained(old)
    torch.testing.assert_close(_logits(a, tok), _logits(b, tok), rtol=0, atol=0)


def test_trainable_checkpoint_options(tiny_checkpoint):
    loaded = SpeechLlavaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    assert loaded.language_model.dtype == torch.bfloat16
    with pytest.raises(NotImplementedError, match="device_map='auto' needs a full export"):
        SpeechLlavaForCausalLM.from_pretrained(tiny_checkpoint, device_map="auto")
    with pytest.raises(TypeError, match=r"\['quantization_config'\] are not supported"):
        SpeechLlavaForCausalLM.from_pretrained(tiny_checkpoint, quantization_config={})
    with pytest.raises(TypeError, match="apply to the full format only"):
        loaded.save_pretrained("unused", max_shard_size="1GB")


def test_full_round_trip_with_tied_embeddings_and_lora(tmp_path, tiny_tokenizer):
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        {**tiny_llm_config(), "tie_word_embeddings": True},
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
    )
    apply_training_mode(model, lora_llm=LoraSettings(r=2, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "full", trainable_only=False)
    loaded = SpeechLlavaForCausalLM.from_pretrained(tmp_path / "full")
    assert loaded.config.checkpoint_format == "trainable"  # what save_pretrained() would write next
    lm = loaded.language_model.get_base_model()
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    torch.testing.assert_close(_logits(loaded, tok), _logits(model, tok), rtol=0, atol=0)
    with pytest.raises(TypeError, match="full export"):
        SpeechLlavaForCausalLM.from_pretrained(tmp_path / "full", llm="meta-llama/Llama-3.1-8B-Instruct")


def test_a_full_export_missing_a_tensor_is_an_error(tmp_path, tiny_tokenizer):
    model, _ = build_model(
        tiny_encoder_config("hubert"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
    )
    model.save_pretrained(tmp_path, trainable_only=False)
    weights = load_file(str(tmp_path / "model.safetensors"))
    dropped = next(k for k in weights if k.startswith("projector."))
    del weights[dropped]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"do not fit the model.*missing.*{dropped}"):
        SpeechLlavaForCausalLM.from_pretrained(tmp_path)
