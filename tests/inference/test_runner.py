"""The batched loop: every index once, longest first, failures accounted for, outputs batch-independent."""

from __future__ import annotations

import numpy as np
import pytest

from llava.dataset.skips import BAD_AUDIO
from llava.inference.generation import GenerationSettings
from llava.inference.prompts import inference_collator
from llava.inference.runner import batches_by_length, predict


def test_batches_by_length():
    durations = [1.0, 3.0, float("nan"), 2.0, 3.0]
    assert batches_by_length([0, 1, 2, 3, 4], durations, 2) == [[1, 4], [3, 0], [2]]  # unknown last
    assert batches_by_length([0, 3], durations, 8) == [[3, 0]]
    assert batches_by_length([2, 0, 1], None, 2) == [[2, 0], [1]]
    assert batches_by_length([], durations, 2) == []
    with pytest.raises(ValueError, match="--batch-size"):
        batches_by_length([0], None, 0)


class _Items:
    """A dataset of Samples where item 2's audio cannot be read."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.items = [
            {
                "id": f"u{i}",
                "task": "ASR",
                "audio": (0.1 * rng.standard_normal(3000 + 2500 * i)).astype(np.float32),
                "prompt": "<audio>\nTranscribe the audio.",
                "target": "",
            }
            for i in range(n)
        ]
        self.durations = [len(x["audio"]) / 16000 for x in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return None if i == 2 else self.items[i]


def test_predict_accounts_for_every_index(tiny_model):
    model, tok = tiny_model
    model.train()
    data = _Items(6)
    collator = inference_collator(tok, model)
    settings = GenerationSettings(max_new_tokens=4)
    batches = list(
        predict(model, tok, data, [5, 0, 1, 2, 4], collator, settings, batch_size=2, durations=data.durations)
    )
    assert model.training  # restored
    assert [[p.index for p in b] for b in batches] == [[5, 4], [2, 1], [0]]  # longest first
    by_index = {p.index: p for b in batches for p in b}
    assert by_index[2].failed == BAD_AUDIO and by_index[2].text == "" and by_index[2].sample is None
    assert all(p.failed is None and p.sample["id"] == f"u{i}" for i, p in by_index.items() if i != 2)
    # Batch size 1 gives the same texts.
    single = {
        p.index: p.text
        for b in predict(model, tok, data, [5, 0, 1, 4], collator, settings, batch_size=1)
        for p in b
    }
    assert single == {i: p.text for i, p in by_index.items() if i != 2}
    assert list(predict(model, tok, data, [], collator, settings)) == []
