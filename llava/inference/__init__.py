"""Inference shared by evaluation, batch inference and the chat CLI.

- `loading`: a checkpoint reassembled for inference (`load_model`, `--dtype`).
- `prompts`: the prompt options (layout, system turn, instruction) and the inference collator.
- `generation`: `generate_batch` and the decoding settings; every option gives the same tokens for a
  prompt alone or in a batch.
- `runner`: the batched loop over a dataset (`predict`), longest first, failures accounted for.
- `fingerprint`: what made a set of predictions, so resumed runs never mix models or data.
- `predictions`: prediction files (JSON lines written batch by batch) and the run record beside them,
  shared by evaluation and batch inference.
- `arguments`: the command-line flags of all of the above.
- `python -m llava.inference`: batch inference by task on a directory or list of audio files.
"""

from llava.inference.generation import GenerationSettings, generate_batch
from llava.inference.loading import load_model
from llava.inference.prompts import PromptOptions, inference_collator
from llava.inference.runner import Prediction, predict

__all__ = [
    "GenerationSettings",
    "Prediction",
    "PromptOptions",
    "generate_batch",
    "inference_collator",
    "load_model",
    "predict",
]
