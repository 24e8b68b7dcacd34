"""Batched generation: every decoding option gives the same tokens at batch 1 and batch 16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.dataset.collator import SpeechCollator
from llava.inference.generation import (
    GeneratedTokensRepetitionPenalty,
    GenerationSettings,
    RowSeededSampling,
    decode_generated,
    generate_batch,
    model_inputs,
    newline_token_ids,
    row_seed,
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
            "prompt": "<audio>\nTranscribe the audio.",
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


def _repetitive(model):
    """Make the tiny LLM repeat itself: a final norm that keeps (almost) one hidden dimension gives
    nearly context-free logits, so greedy decoding loops over a few tokens and a repetition
    penalty changes the output."""
    with torch.no_grad():
        w = torch.full_like(model.language_model.model.norm.weight, 0.05)
        w[0] = 1.0
        model.language_model.model.norm.weight.copy_(w)


# Rows of 16 different lengths: every row is padded by a different amount in the batch.
SIXTEEN = [3000 + 1700 * i for i in range(16)]
OPTIONS = {
    "greedy": {},
    "repetition_penalty": {"repetition_penalty": 2.0},
    "sampling": {"temperature": 1.0, "seed": 3},
    "sampling_top_k_top_p": {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
    "beams": {"num_beams": 3},
    "beams_length_penalty_repetition": {"num_beams": 4, "length_penalty": 0.5, "repetition_penalty": 1.5},
    "stop_at_newline": {"stop_at_newline": True},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_gives_the_same_tokens_at_batch_1_and_16(model_and_tok, option):
    model, tok = model_and_tok
    if "repetition" in option:
        _repetitive(model)
    samples = _samples(SIXTEEN, seed=1)
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    settings = GenerationSettings(max_new_tokens=8, **OPTIONS[option])
    batched = generate_batch(model, tok, collator(samples), settings)
    single = [generate_batch(model, tok, collator([s]), settings)[0] for s in samples]
    assert batched == single
    if option != "stop_at_newline":  # most rows end at the newline there
        assert len(set(single)) > 1, "outputs should depend on the row for this test to mean anything"


def test_repetition_penalty_applies_and_transformers_own_does_not_batch(model_and_tok):
    model, tok = model_and_tok
    _repetitive(model)
    samples = _samples(SIXTEEN, seed=1)
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    plain = generate_batch(model, tok, collator(samples), GenerationSettings(max_new_tokens=8))
    penal = generate_batch(
        model, tok, collator(samples), GenerationSettings(max_new_tokens=8, repetition_penalty=2.0)
    )
    assert sum(a != b for a, b in zip(plain, penal)) > 8  # the penalty changes what this model says
    # The failure the processor replaces: transformers' `repetition_penalty` with left-padded
    # `inputs_embeds` skips the first p generated tokens of a row padded by p.
    kwargs = dict(
        max_new_tokens=8,
        do_sample=False,
        repetition_penalty=2.0,
        eos_token_id=stop_token_ids(tok, model),
        pad_token_id=tok.pad_token_id,
    )
    with pytest.warns(UserWarning):
        batch = model.generate(**model_inputs(collator(samples), "cpu"), **kwargs)
        differ = 0
        for i, s in enumerate(samples):
            one = model.generate(**model_inputs(collator([s]), "cpu"), **kwargs)[0].tolist()
            differ += batch[i, : len(one)].tolist() != one
    assert differ > 0


def test_repetition_penalty_processor_matches_a_reference():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    generated = torch.tensor([[0, 1, 0], [2, 3, 2]])  # repeats count once
    out = GeneratedTokensRepetitionPenalty(2.0)(generated, scores.clone())
    expected = scores.clone()
    for row, ids in enumerate(generated.tolist()):
        for t in set(ids):
            v = scores[row, t]
            expected[row, t] = v / 2.0 if v > 0 else v * 2.0
    assert torch.equal(out, expected)
    empty = torch.zeros(2, 0, dtype=torch.long)  # the first step: nothing generated yet
    assert torch.equal(GeneratedTokensRepetitionPenalty(2.0)(empty, scores), scores)
    with pytest.raises(ValueError, match="> 0"):
        GeneratedTokensRepetitionPenalty(0.0)


def test_row_seeded_sampling_draws_from_the_softmax_per_row():
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3]))
    seeds = [row_seed(0, f"u{i}") for i in range(4000)]
    picks = RowSeededSampling(seeds)(None, logits.repeat(4000, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.03, rtol=0)
    # A row's draws depend on its seed only, not on the rows beside it.
    alone = RowSeededSampling(seeds[7:8])(None, logits[None])
    assert torch.equal(alone[0], RowSeededSampling(seeds[:16])(None, logits.repeat(16, 1))[7])
    assert row_seed(0, "u1") != row_seed(1, "u1") and row_seed(0, "u1") == row_seed(0, "u1")


def test_sampling_is_seeded_by_settings_and_sample_id(model_and_tok):
    model, tok = model_and_tok
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    batch = collator(_samples(LENGTHS))
    settings = GenerationSettings(max_new_tokens=6, temperature=1.5, top_k=50, top_p=0.9, seed=1)
    a = generate_batch(model, tok, batch, settings)
    assert a == generate_batch(model, tok, batch, settings)  # same seed and ids, whatever torch's RNG
    other = generate_batch(model, tok, batch, GenerationSettings(**{**settings.as_dict(), "seed": 2}))
    assert other != a
    ad_hoc = {k: v for k, v in batch.items() if k != "ids"}  # no ids: torch's global generator
    torch.manual_seed(5)
    b = generate_batch(model, tok, ad_hoc, settings)
    torch.manual_seed(5)
    assert generate_batch(model, tok, ad_hoc, settings) == b


def test_left_padded_batch_matches_batch_size_one_in_scores(model_and_tok):
    model, tok = model_and_tok
    samples = _samples(LENGTHS)
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    batch = collator(samples)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should be left padded"
    # Token ids and scores, not only texts (texts can hide differences in partial bytes).
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


def test_decoding_cuts_at_stop_token_and_inside_a_newline_token(tiny_tokenizer):
    tok = tiny_tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot in stop_token_ids(tok)
    text_ids = tok("one two\nthree", add_special_tokens=False)["input_ids"]
    more = tok(" four", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([text_ids + [eot] + more])
    newlines = newline_token_ids(tok)
    assert decode_generated(tok, tokens, [eot]) == ["one two\nthree"]
    assert decode_generated(tok, tokens, [eot], newlines) == ["one two"]

    # A token holding text and then a newline (as real BPE vocabularies have) keeps its text.
    class Table:
        pieces = {1: "yes", 2: " sir.\nAnd", 3: " more", 9: "<eos>"}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 9))

    assert decode_generated(Table(), torch.tensor([[1, 2, 3, 9]]), [9], [2]) == ["yes sir."]
    assert decode_generated(Table(), torch.tensor([[1, 3, 9, 2]]), [9], [2]) == ["yes more"]


def test_newline_token_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = newline_token_ids(tok)
    assert ids and all("\n" in tok.decode([i]) for i in ids)
    word = tok("one", add_special_tokens=False)["input_ids"][-1]
    assert word not in ids
    assert newline_token_ids(tok) == ids  # cached per tokenizer


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"temperature": -1}, "--temperature"),
        ({"top_p": 0}, "--top-p"),
        ({"top_k": 0}, "--top-k"),
        ({"repetition_penalty": 0}, "--repetition-penalty"),
        ({"num_beams": 0}, "--num-beams"),
        ({"num_beams": 2, "temperature": 0.7}, "--num-beams"),
    ],
)
def test_bad_settings_are_rejected(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        GenerationSettings(**kwargs)
