"""Registration of the speech-llava classes with the `transformers` Auto classes.

Runs when `llava` is imported, so `AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and
`AutoProcessor` load speech-llava checkpoints and exports without `trust_remote_code`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from llava.model.configuration import SpeechLlavaConfig
from llava.model.modeling import SpeechLlavaForCausalLM
from llava.model.processing import SpeechLlavaProcessor

__all__ = ["register_auto_classes"]


def register_auto_classes() -> None:
    """Register config, model and processor (idempotent)."""
    AutoConfig.register(SpeechLlavaConfig.model_type, SpeechLlavaConfig, exist_ok=True)
    AutoModel.register(SpeechLlavaConfig, SpeechLlavaForCausalLM, exist_ok=True)
    AutoModelForCausalLM.register(SpeechLlavaConfig, SpeechLlavaForCausalLM, exist_ok=True)
    AutoProcessor.register(SpeechLlavaConfig, SpeechLlavaProcessor, exist_ok=True)
