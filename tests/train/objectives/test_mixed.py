"""Contrastive + mixed: layer-0 InfoNCE between the transcript and the interleaved sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llava.train.objectives.base import StepInputs
from llava.train.objectives.mixed import MixedContrastive
from tests.helpers import TRANSCRIPTS, asr_sample, objective_from_flags, speech_batch, weighted_loss


def test_mixed_contrastive_text_side_is_bos_transcript_eot_as_the_original(tiny_model):
    """Layer-0 InfoNCE between [BOS] + transcript + <|eot_id|> and the mixed sequence (BOS + spans +
    end token), both mean-pooled over every position: checked against a loop-by-loop reference."""
    import numpy as np

    from llava.dataset.collator import SpeechCollator

    model, tok = tiny_model
    rng = np.random.default_rng(0)
    samples = []
    for i, text in enumerate(TRANSCRIPTS):
        words = text.split()
        audio = (rng.standard_normal(5000 + 900 * i) * 0.1).astype(np.float32)
        segments = [("text", " ".join(words[:2])), ("audio", audio[: 3000 + 500 * i]), ("text", words[-1])]
        samples.append(asr_sample(f"m{i}", audio, text, segments, prompt="<audio>"))
    objective = objective_from_flags(model, audio_nwp=True, contrastive_training=True)
    collator = SpeechCollator(
        tok,
        model.num_audio_tokens,
        mode=objective.collator_mode,
        with_transcript=True,
        transcript_special_tokens=objective.transcript_special_tokens,
    )
    batch = collator(samples)
    assert tok.eos_token == "<|eot_id|>"
    for row, mask, text in zip(batch["text_input_ids"], batch["text_attention_mask"], TRANSCRIPTS):
        ids = row[mask.bool()].tolist()
        assert ids == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id
        ]
    model.eval()
    loss, terms = weighted_loss(objective, model, batch)
    assert set(terms) == {"contrastive_layer_0"}

    table = model.language_model.get_input_embeddings()
    with torch.no_grad():
        spliced = model.splice(
            batch["input_ids"], *model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        )
    text_vecs, mixed_vecs = [], []
    for i, text in enumerate(TRANSCRIPTS):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        text_vecs.append(torch.stack([table.weight[t] for t in ids]).double().mean(0))
        n = int(batch["attention_mask"][i].sum())
        mixed_vecs.append(spliced[i, :n].double().mean(0))
    ref = 0.0
    for i in range(len(TRANSCRIPTS)):
        sims = torch.stack([F.cosine_similarity(text_vecs[i], mixed_vecs[j], dim=0) / 0.1 for j in range(3)])
        ref += float(torch.logsumexp(sims, 0) - sims[i]) / len(TRANSCRIPTS)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)


def test_mixed_contrastive_needs_the_transcript_side(tiny_model):
    model, tok = tiny_model
    objective = MixedContrastive(text_special_tokens=False)
    assert objective.collator_mode == "mixed" and objective.needs_transcript
    assert not objective.transcript_special_tokens and MixedContrastive().transcript_special_tokens
    with pytest.raises(ValueError, match="needs the transcript"):
        objective(model, StepInputs(model, speech_batch(model, tok, [8000, 6000])))
