"""`SpeechLlavaConfig`: the composite configuration of encoder + projector + LLM."""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# What a directory's weights hold: "trainable" = the trained tensors only (projector, LoRA), the base
# encoder and LLM loaded from the paths the config records (the default; every older checkpoint);
# "full" = every weight of the model (`python -m llava.export`), loadable with nothing else.
CHECKPOINT_FORMATS = ("trainable", "full")


def _as_config(value: Any, field: str) -> PretrainedConfig | None:
    if value is None:
        return None
    if isinstance(value, PretrainedConfig):
        # A copy: the composite config must never mutate the live sub-model's config (attention
        # implementation settings propagate into sub-configs).
        return copy.deepcopy(value)
    if isinstance(value, dict):
        if "model_type" not in value:
            raise ValueError(f"SpeechLlavaConfig.{field}: a dict sub-config needs a 'model_type' key")
        kwargs = dict(value)
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    raise TypeError(f"SpeechLlavaConfig.{field}: expected a dict or PretrainedConfig, got {type(value)}")


class SpeechLlavaConfig(PretrainedConfig):
    """Configuration of a speech LLM: audio encoder → projector → causal LLM.

    Args:
        audio_config: config of the speech encoder (HuBERT, WavLM, wav2vec2, Whisper).
        text_config: config of the causal LLM.
        audio_encoder_name_or_path: hub id or directory the encoder weights come from; `None` for
            a randomly initialised encoder built from `audio_config`.
        llm_name_or_path: hub id or directory of the LLM (and its tokenizer); `None` for random init.
        projector_type: key of `llava.model.projectors.PROJECTORS` ("qformer", "mlp", "linear").
        projector_config: keyword arguments of that projector's settings dataclass.
        encoder_layer: which encoder hidden state feeds the projector (-1 = last layer).
        audio_token_id: id of the `<audio>` placeholder in the tokenizer.
        lora: LoRA settings per component, e.g. `{"llm": {"r": 8, ...}}`; empty when unused.
        checkpoint_format: one of CHECKPOINT_FORMATS: whether the weights beside this config are the
            trainable tensors only (default) or the whole model.
        audio_feature_extractor: the encoder's feature-extractor settings (`to_dict()`), recorded in
            full exports so a model built from this config alone featurises audio as the original
            did; None: the default extractor of `audio_config`.
    """

    model_type = "speech_llava"
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        audio_encoder_name_or_path: str | None = None,
        llm_name_or_path: str | None = None,
        projector_type: str = "qformer",
        projector_config: dict | None = None,
        encoder_layer: int = -1,
        audio_token_id: int | None = None,
        lora: dict | None = None,
        checkpoint_format: str = "trainable",
        audio_feature_extractor: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"SpeechLlavaConfig.checkpoint_format {checkpoint_format!r}: expected one of {list(CHECKPOINT_FORMATS)}"
            )
        if audio_feature_extractor is not None and not isinstance(audio_feature_extractor, dict):
            raise TypeError(
                "SpeechLlavaConfig.audio_feature_extractor: expected a dict (a feature extractor's to_dict()), "
                f"got {type(audio_feature_extractor).__name__}"
            )
        self.audio_config = _as_config(audio_config, "audio_config")
        self.text_config = _as_config(text_config, "text_config")
        self.audio_encoder_name_or_path = audio_encoder_name_or_path
        self.llm_name_or_path = llm_name_or_path
        self.projector_type = projector_type
        self.projector_config = dict(projector_config or {})
        self.encoder_layer = encoder_layer
        self.audio_token_id = audio_token_id
        self.lora = dict(lora or {})
        self.checkpoint_format = checkpoint_format
        self.audio_feature_extractor = dict(audio_feature_extractor) if audio_feature_extractor else None
        super().__init__(**kwargs)
