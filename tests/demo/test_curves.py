"""Teacher-forced dev NLL: the token-level sum against a direct computation and against the model's
own loss; the checkpoint steps of a learning curve."""

from __future__ import annotations

import math

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.demo.curves import curve_every, curve_steps, dev_nll, dev_rows, token_nll


def test_token_nll_matches_a_direct_sum():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, 3, 1, IGNORE_INDEX, 6], [IGNORE_INDEX, IGNORE_INDEX, 2, 2, 0]])
    total, count = token_nll(logits, labels)
    ref, n = 0.0, 0
    for b in range(2):
        for t in range(1, 5):  # position t - 1 predicts token t
            if labels[b, t] != IGNORE_INDEX:
                row = logits[b, t - 1]
                ref -= float(row[labels[b, t]] - torch.logsumexp(row, 0))
                n += 1
    assert count == n == 6 and total == pytest.approx(ref, rel=1e-6)
    assert token_nll(logits, torch.full((2, 5), IGNORE_INDEX)) == (0.0, 0)


def test_curve_steps():
    assert curve_every(60, 4) == 15 and curve_steps(60, 4) == [15, 30, 45, 60]
    assert curve_steps(50, 4) == [12, 24, 36, 48, 50]
    assert curve_steps(3, 4) == [1, 2, 3]
    with pytest.raises(ValueError):
        curve_steps(0, 4)


def test_dev_nll_is_the_models_own_loss_per_token(tiny_corpus, tiny_model):
    model, tokenizer = tiny_model
    ds, rows, system = dev_rows(tiny_corpus / "configs" / "finetune_mixed.yml", limit_per_task=3)
    assert set(rows) == {"ASR", "ST", "SQA"} and all(len(v) == 3 for v in rows.values())
    out = dev_nll(model, tokenizer, ds, {"ASR": rows["ASR"]}, batch_size=2, system_prompt=system)

    from llava.dataset.collator import SpeechCollator

    collator = SpeechCollator(tokenizer, model.num_audio_tokens, max_length=1 << 30, system_prompt=system)
    batch = collator([ds[i] for i in rows["ASR"]])  # one batch: the model's mean over all target tokens
    model.eval()
    with torch.no_grad():
        loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "audio_values", "audio_lengths")}).loss  # fmt: skip
    tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert out["ASR"]["tokens"] == tokens
    assert out["ASR"]["nll"] == pytest.approx(float(loss), rel=1e-4)
    assert math.isfinite(out["ASR"]["nll"]) and out["ASR"]["nll"] > 0
