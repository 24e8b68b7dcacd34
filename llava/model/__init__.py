"""Model composition: audio encoder -> projector -> LLM."""

from llava.model.builder import (
    LoraSettings,
    apply_training_mode,
    build_model,
    load_pretrained_model,
    load_projector,
)
from llava.model.checkpoint import save_trainable
from llava.model.configuration import SpeechLlavaConfig
from llava.model.encoders import AudioEncoder
from llava.model.modeling import SpeechLlavaForCausalLM

__all__ = [
    "AudioEncoder",
    "LoraSettings",
    "SpeechLlavaConfig",
    "SpeechLlavaForCausalLM",
    "apply_training_mode",
    "build_model",
    "load_pretrained_model",
    "load_projector",
    "save_trainable",
]
