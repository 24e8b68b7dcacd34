"""speech-llava: speech LLMs with contrastive speech/text projector pretraining."""

__version__ = "0.1.0"

# Importing the package registers SpeechLlavaConfig / SpeechLlavaForCausalLM / SpeechLlavaProcessor with
# the transformers Auto classes (no trust_remote_code needed to load a checkpoint or an export).
from llava.model.auto import register_auto_classes as _register_auto_classes  # noqa: E402

_register_auto_classes()
