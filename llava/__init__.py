"""speech-llava: speech LLMs with contrastive speech/text projector pretraining."""

__version__ = "0.1.0"
