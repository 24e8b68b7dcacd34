"""Batched generation: left-padded batches match batch size 1; stop tokens, newline cut, settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.dataset.collator import SpeechCollator
from llava.eval.generation import (
    GenerationSettings,
    NewlineStoppingCriteria,
    decode_generated,
    generate_batch,
    model_inputs,
    stop_token_ids,
)

LENGTHS = [16000, 5000, 27000, 9000]  # four different audio lengths -> four different prompt lengths


def _samples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"utt{i}",
            "task": "ASR",
            "audio": (0.1 * rng.standard_normal(n)).astype(np.float32),
            "prompt": "Transcribe the audio.\n<audio>",
            "target": "unused",
        }
        for i, n in enumerate(lengths)
    ]


@pytest.fixture
def model_and_tok(tiny_model):
    model, tok = tiny_model
    model.eval()
    # A random projector barely moves a random LLM; scale it up so the audio decides the output and
    # a row mix-up inside the batch would show.
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(5.0)
    return model, tok


def test_left_padded_batch_matches_batch_size_one(model_and_tok):
    model, tok = model_and_tok
    samples = _samples(LENGTHS)
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    settings = GenerationSettings(max_new_tokens=12)
    batch = collator(samples)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should be left padded"

    single = [generate_batch(model, tok, collator([s]), settings)[0] for s in samples]
    batched = generate_batch(model, tok, batch, settings)
    assert batched == single
    assert len(set(single)) > 1, "outputs should depend on the audio for this test to mean anything"

    # The same at the level of token ids and scores (texts can hide differences in partial bytes).
    kwargs = dict(
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stop_token_ids(tok, model),
        output_scores=True,
        return_dict_in_generate=True,
    )
    out = model.generate(**model_inputs(batch, "cpu"), **kwargs)
    scores = torch.stack(out.scores, 1)  # [B, T, V]
    for i, s in enumerate(samples):
        one = model.generate(**model_inputs(collator([s]), "cpu"), **kwargs)
        n = one.sequences.shape[1]
        assert out.sequences[i, :n].tolist() == one.sequences[0].tolist()
        torch.testing.assert_close(scores[i, :n], torch.stack(one.scores, 1)[0], atol=1e-4, rtol=1e-4)


def test_generation_sees_left_padded_positions_from_the_attention_mask(model_and_tok):
    """transformers derives position ids from the mask (pads at 0, real tokens from 0) and continues
    them per row while decoding; record what the LLM receives."""
    model, tok = model_and_tok
    batch = SpeechCollator(tok, model.num_audio_tokens, inference=True)(_samples(LENGTHS[:2]))
    seen = []
    hook = model.language_model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    try:
        generate_batch(model, tok, batch, GenerationSettings(max_new_tokens=2))
    finally:
        hook.remove()
    mask = batch["attention_mask"]
    expected = (mask.cumsum(-1) - 1).clamp(min=0)
    assert torch.equal(seen[0][:, mask[0].bool()], expected[:, mask[0].bool()])
    assert torch.equal(seen[0][1][mask[1].bool()], torch.arange(int(mask[1].sum())))
    assert seen[1][:, -1].tolist() == mask.sum(1).tolist()  # first decoding step continues each row


def test_empty_batch_and_text_only_prompt(model_and_tok):
    model, tok = model_and_tok
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    assert generate_batch(model, tok, collator([None])) == []
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out = generate_batch(model, tok, batch, GenerationSettings(max_new_tokens=3))
    assert len(out) == 1 and isinstance(out[0], str)


def test_sampling_is_seeded_and_respects_settings(model_and_tok):
    model, tok = model_and_tok
    batch = SpeechCollator(tok, model.num_audio_tokens, inference=True)(_samples(LENGTHS[:2]))
    settings = GenerationSettings(
        max_new_tokens=5, temperature=1.5, top_k=50, top_p=0.9, repetition_penalty=1.2
    )
    torch.manual_seed(1)
    a = generate_batch(model, tok, batch, settings)
    torch.manual_seed(1)
    b = generate_batch(model, tok, batch, settings)
    assert a == b and len(a) == 2


def test_decoding_cuts_at_stop_token_and_newline(tiny_tokenizer):
    tok = tiny_tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in stop_token_ids(tok)
    text_ids = tok("one two\nthree", add_special_tokens=False)["input_ids"]
    more = tok(" four", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([text_ids + [eot] + more])
    assert decode_generated(tok, tokens, [eot]) == ["one two\nthree"]
    assert decode_generated(tok, tokens, [eot], stop_at_newline=True) == ["one two"]


def test_newline_stopping_criterion(tiny_tokenizer):
    tok = tiny_tokenizer
    crit = NewlineStoppingCriteria(tok)
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    word = tok("one", add_special_tokens=False)["input_ids"][-1]
    assert "\n" in tok.decode([newline]) and "\n" not in tok.decode([word])
    done = crit(torch.tensor([[word, newline], [newline, word]]), None)
    assert done.tolist() == [True, False]
    assert NewlineStoppingCriteria(tok).newline_ids is crit.newline_ids  # computed once per tokenizer


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": 0}, {"repetition_penalty": 0}],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        GenerationSettings(**kwargs)
