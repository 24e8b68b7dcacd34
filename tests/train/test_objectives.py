"""Training objectives: term composition, gradients, layer-0 shortcut, position shift, validation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from llava.train.arguments import DataArguments, LossArguments
from llava.train.objectives import compute_objective, objective_from_args
from tests.model.test_modeling import _batch


def _contrastive_batch(model, tok, lengths=(12000, 9000, 7000)):
    batch = _batch(model, tok, list(lengths))
    words = ["the quick brown fox", "a small cat", "one two three four five"][: len(lengths)]
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    width = max(map(len, ids))
    batch["text_input_ids"] = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
    batch["text_attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    return batch


def _objective(model, **loss_kw):
    data_kw = {"audio_nwp": loss_kw.pop("audio_nwp", False)}
    return objective_from_args(LossArguments(**loss_kw), DataArguments(**data_kw), model.num_llm_layers)


def test_nwp_term_equals_full_logits_cross_entropy(tiny_model):
    model, tok = tiny_model
    batch = _batch(model, tok, [12000, 8000])
    loss, terms = compute_objective(model, batch, _objective(model), random.Random(0))
    ref = model(**batch).loss  # HF's own shifted CE over the full logits
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert set(terms) == {"nwp"}


def test_contrastive_equals_reference_and_trains_projector_only(tiny_model):
    model, tok = tiny_model
    batch = _contrastive_batch(model, tok)
    obj = _objective(model, contrastive_training=True, contrastive_layer="all")
    assert obj.layers == [0, 1, 2] and not obj.nwp
    loss, terms = compute_objective(model, batch, obj, random.Random(0))
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("projector."))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())

    # Independent reference: plain loops over layers and pairs, float64.
    with torch.no_grad():
        speech, smask = model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        text = model.language_model.get_input_embeddings()(batch["text_input_ids"])
        lm = model.language_model.get_decoder()
        hs = lm(inputs_embeds=speech, attention_mask=smask.long(), output_hidden_states=True).hidden_states
        ht = lm(
            inputs_embeds=text, attention_mask=batch["text_attention_mask"], output_hidden_states=True
        ).hidden_states
    total = 0.0
    for layer in (0, 1, 2):
        s_vec, t_vec = [], []
        for i in range(3):
            s_vec.append(hs[layer][i][smask[i]].double().mean(0))
            t_vec.append(ht[layer][i][batch["text_attention_mask"][i].bool()].double().mean(0))
        layer_loss = 0.0
        for i in range(3):
            sims = torch.stack([F.cosine_similarity(t_vec[i], s_vec[j], dim=0) / 0.1 for j in range(3)])
            layer_loss += -(sims[i] - torch.logsumexp(sims, 0))
        layer_loss /= 3
        assert abs(float(terms[f"contrastive_layer_{layer}"]) - float(layer_loss)) < 1e-4
        total += float(layer_loss)
    assert abs(float(loss.detach()) - total) < 1e-4


def test_combined_loss_is_sum_of_terms(tiny_model):
    model, tok = tiny_model
    batch = _contrastive_batch(model, tok)
    obj = _objective(model, contrastive_training=True, contrastive_layer="0", contr_asr_combine_loss=True)
    loss, terms = compute_objective(model, batch, obj, random.Random(0))
    torch.testing.assert_close(loss, terms["nwp"] + terms["contrastive"])


def test_layer_zero_runs_no_llm_pass(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls = []
    decoder = model.language_model.get_decoder()
    original = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    compute_objective(
        model, _contrastive_batch(model, tok), _objective(model, contrastive_training=True), random.Random(0)
    )
    assert calls == []


def test_position_shift_reaches_both_passes(tiny_model, monkeypatch):
    model, tok = tiny_model
    seen = []
    original = model.llm_hidden_states

    def spy(embeds, mask, layers, position_ids=None):
        seen.append(position_ids)
        return original(embeds, mask, layers, position_ids)

    monkeypatch.setattr(model, "llm_hidden_states", spy)
    obj = _objective(model, contrastive_training=True, contrastive_layer="all", position_shift=True)
    compute_objective(model, _contrastive_batch(model, tok), obj, random.Random(5))
    offset = random.Random(5).randrange(400)
    assert len(seen) == 2 and all(p is not None for p in seen)
    assert {int(p[0, 0]) for p in seen} == {offset}  # same offset, text and speech pass
    obj = _objective(model, contrastive_training=True, contrastive_layer="all")
    seen.clear()
    compute_objective(model, _contrastive_batch(model, tok), obj, random.Random(5))
    assert seen == [None, None]


def test_contrastive_batch_of_one_is_an_error(tiny_model):
    model, tok = tiny_model
    with pytest.raises(ValueError, match="at least 2|fewer than 2|size 1|2 pairs"):
        compute_objective(
            model,
            _contrastive_batch(model, tok, [12000]),
            _objective(model, contrastive_training=True),
            random.Random(0),
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"contrastive_mode": "cosine"}, "contrastive_mode"),
        ({"contrastive_layer": "3"}, "3"),
        ({"contrastive_layer": "first"}, "first"),
        ({"contrastive_layer": "0,1", "contrastive_layer_weights": "2:1.0"}, "not in"),
        ({"contrastive_training": True, "contrastive_layer": "all", "audio_nwp": True}, "layer 0"),
    ],
)
def test_bad_loss_flags_fail_before_training(tiny_model, kw, match):
    model, _ = tiny_model
    with pytest.raises(ValueError, match=match):
        _objective(model, **kw)
