"""Shared fixtures: tiny tokenizers and model configs built in-process (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.tiny.tokenizer import train_bpe_tokenizer

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small cat sleeps on the warm mat in the sun",
    "der schnelle braune fuchs springt über den faulen hund",
    "transcribe the audio into text",
    "translate the audio into german",
    "answer the question about the audio",
    "what does the speaker say",
    "one two three four five six seven eight nine ten",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer with Llama-3 special tokens and chat template (vocab ~400)."""
    return train_bpe_tokenizer(_CORPUS * 4, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
