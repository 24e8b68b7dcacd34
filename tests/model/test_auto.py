"""Registration with the transformers Auto classes: loading needs no trust_remote_code."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from llava.model.auto import register_auto_classes
from llava.model.configuration import SpeechLlavaConfig
from llava.model.modeling import SpeechLlavaForCausalLM
from llava.model.processing import SpeechLlavaProcessor
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config


def _config() -> SpeechLlavaConfig:
    return SpeechLlavaConfig(
        audio_config=tiny_encoder_config("hubert"),
        text_config=tiny_llm_config(),
        projector_config=TINY_QFORMER,
        audio_token_id=399,
    )


def test_importing_llava_registers_the_auto_classes():
    settings = {k: v for k, v in _config().to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("speech_llava", **settings)
    assert type(config) is SpeechLlavaConfig
    assert type(AutoModelForCausalLM.from_config(config)) is SpeechLlavaForCausalLM
    assert type(AutoModel.from_config(config)) is SpeechLlavaForCausalLM
    assert PROCESSOR_MAPPING[SpeechLlavaConfig] is SpeechLlavaProcessor
    assert SpeechLlavaForCausalLM.config_class is SpeechLlavaConfig


def test_register_auto_classes_is_idempotent_and_reads_saved_configs(tmp_path):
    register_auto_classes()
    register_auto_classes()  # a second import path (e.g. an export's loader) must not fail
    assert CONFIG_MAPPING[SpeechLlavaConfig.model_type] is SpeechLlavaConfig
    _config().save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)  # no trust_remote_code
    assert type(loaded) is SpeechLlavaConfig and loaded.audio_token_id == 399
    assert loaded.text_config.hidden_size == tiny_llm_config()["hidden_size"]
