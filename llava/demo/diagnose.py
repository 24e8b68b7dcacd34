"""Layer-wise speech/text alignment of a stage-1 checkpoint on the ASR test set."""

from __future__ import annotations

import itertools
from pathlib import Path

from llava.dataset.dataset import SpeechDataset
from llava.eval.alignment import alignment_eval, write_alignment
from llava.model import load_pretrained_model


def alignment_of_checkpoint(ckpt: Path, data_config: Path, out: Path, limit: int) -> dict:
    """Alignment metrics per LLM layer; writes `alignment.json` / `alignment.png` into `out`."""
    model, tokenizer = load_pretrained_model(ckpt)
    dataset = SpeechDataset.from_config(data_config, "test", train=False)
    samples = (dataset[i] for i in range(len(dataset)))
    results = alignment_eval(model, tokenizer, itertools.islice(samples, limit), layers="all", batch_size=16)
    write_alignment(results, out / "test")
    return {"layers": {str(k): v for k, v in results.items()}}
