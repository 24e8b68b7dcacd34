"""Teacher-forced dev NLL: against a direct per-token sum over the model's full logits and against the
model's own loss; the checkpoint steps of a learning curve."""

from __future__ import annotations

import math

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.demo.curves import curve_every, curve_steps, dev_batches, dev_nll, dev_rows


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
    asr = {"ASR": rows["ASR"]}
    out = dev_nll(model, dev_batches(model, tokenizer, ds, asr, batch_size=2, system_prompt=system))

    from llava.dataset.collator import SpeechCollator

    collator = SpeechCollator(tokenizer, model.num_audio_tokens, max_length=1 << 30, system_prompt=system)
    batch = collator([ds[i] for i in rows["ASR"]])  # one batch: the model's mean over all target tokens
    model.eval()
    with torch.no_grad():
        res = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "audio_values", "audio_lengths")})  # fmt: skip
    # An independent sum over the full logits: position t - 1 predicts token t.
    labels, logits = batch["labels"], res.logits
    ref, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE_INDEX:
                row = logits[b, t - 1].double()
                ref -= float(row[labels[b, t]] - torch.logsumexp(row, 0))
                n += 1
    assert out["ASR"]["tokens"] == n > 0
    assert out["ASR"]["nll"] == pytest.approx(ref / n, rel=1e-4)
    assert out["ASR"]["nll"] == pytest.approx(float(res.loss), rel=1e-4)
    # Batching (and the duration order inside it) does not change the pooled figure.
    single = dev_nll(model, dev_batches(model, tokenizer, ds, asr, batch_size=1, system_prompt=system))
    assert single["ASR"]["tokens"] == n and single["ASR"]["nll"] == pytest.approx(ref / n, rel=1e-4)
    assert math.isfinite(out["ASR"]["nll"]) and out["ASR"]["nll"] > 0
