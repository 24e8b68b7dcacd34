"""`SpeechLlavaConfig`: sub-configs from dicts or configs, JSON round trip, bad sub-configs."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from llava.model.configuration import SpeechLlavaConfig
from tests.conftest import tiny_encoder_config, tiny_llm_config


def _config(**kw) -> SpeechLlavaConfig:
    return SpeechLlavaConfig(
        audio_config=tiny_encoder_config(), text_config=tiny_llm_config(), projector_type="mlp",
        projector_config={"stack": 3}, encoder_layer=-2, audio_token_id=7, lora={"llm": {"r": 4}}, **kw,
    )  # fmt: skip


def test_json_round_trip_keeps_every_field():
    config = _config(llm_name_or_path="some/llm")
    data = json.loads(config.to_json_string(use_diff=False))
    assert data["model_type"] == "speech_llava"
    again = SpeechLlavaConfig(**{k: v for k, v in data.items() if k != "model_type"})
    assert again.audio_config.model_type == "hubert" and again.audio_config.hidden_size == 32
    assert again.text_config.model_type == "llama" and again.text_config.num_hidden_layers == 2
    for name in (
        "projector_type",
        "projector_config",
        "encoder_layer",
        "audio_token_id",
        "lora",
        "llm_name_or_path",
    ):
        assert getattr(again, name) == getattr(config, name)


def test_a_live_sub_config_is_copied_not_shared():
    live = AutoConfig.for_model(**tiny_llm_config())
    config = SpeechLlavaConfig(text_config=live)
    config.text_config.hidden_size = 999
    assert live.hidden_size == 64


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"hidden_size": 4}, ValueError, r"text_config: a dict sub-config needs a 'model_type'"),
        ([1, 2], TypeError, r"text_config: expected a dict or PretrainedConfig"),
    ],
)
def test_bad_sub_configs_name_the_field(value, error, match):
    with pytest.raises(error, match=match):
        SpeechLlavaConfig(text_config=value)
