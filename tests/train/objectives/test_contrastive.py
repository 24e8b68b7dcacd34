"""Speech/text contrastive objectives: the loss against a loop reference, layers, position shift,
learnable temperature."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from llava.model import apply_training_mode, build_model
from llava.train.objectives.base import ObjectiveSet, StepInputs
from llava.train.objectives.contrastive import AverageContrastive
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config
from tests.helpers import contrastive_batch, objective_from_flags, speech_batch, weighted_loss


def test_contrastive_equals_reference_and_trains_projector_only(tiny_model):
    model, tok = tiny_model
    batch = contrastive_batch(model, tok)
    obj = objective_from_flags(model, contrastive_training=True, contrastive_layer="all")
    assert obj.parts["contrastive_average"].layers == [0, 1, 2]
    loss, terms = weighted_loss(obj, model, batch)
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
        assert abs(float(terms[f"contrastive_layer_{layer}"].detach()) - float(layer_loss)) < 1e-4
        total += float(layer_loss)
    assert abs(float(loss.detach()) - total) < 1e-4


def test_layer_zero_runs_no_llm_pass(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls = []
    decoder = model.language_model.get_decoder()
    original = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    objective_from_flags(model, contrastive_training=True)(model, contrastive_batch(model, tok))
    assert calls == []


def test_llm_stops_at_the_deepest_contrastive_layer(tiny_tokenizer):
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        {**tiny_llm_config(), "num_hidden_layers": 4},
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model)
    ran = []
    hooks = [
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        for i, block in enumerate(model.language_model.get_decoder().layers)
    ]
    weighted_loss(
        objective_from_flags(model, contrastive_training=True, contrastive_layer="1"),
        model,
        contrastive_batch(model, tok),
    )
    assert ran == [0, 0]  # layer 1 only, text and speech pass; layers 2-4 never run
    ran.clear()
    weighted_loss(
        objective_from_flags(model, contrastive_training=True, contrastive_layer="-1"),
        model,
        contrastive_batch(model, tok),
    )
    assert ran == [0, 1, 2, 3] * 2
    for h in hooks:
        h.remove()


def test_contrastive_layer_minus_one_is_the_last(tiny_model):
    model, tok = tiny_model
    last = objective_from_flags(model, contrastive_training=True, contrastive_layer="-1")
    assert last.parts["contrastive_average"].layers == [model.num_llm_layers]
    batch = contrastive_batch(model, tok)
    torch.manual_seed(0)
    a = weighted_loss(last, model, batch)[0]
    b = weighted_loss(
        objective_from_flags(model, contrastive_training=True, contrastive_layer="last"), model, batch
    )[0]
    torch.testing.assert_close(a, b)


def test_position_shift_reaches_both_passes(tiny_model, monkeypatch):
    model, tok = tiny_model
    seen = []
    original = model.hidden_states

    def spy(embeds, mask, layers, position_ids=None):
        seen.append(position_ids)
        return original(embeds, mask, layers, position_ids)

    monkeypatch.setattr(model, "hidden_states", spy)
    obj = objective_from_flags(model, contrastive_training=True, contrastive_layer="all", position_shift=True)
    random.seed(5)
    obj(model, contrastive_batch(model, tok))
    offset = random.Random(5).randrange(400)
    assert len(seen) == 2 and all(p is not None for p in seen)
    assert {int(p[0, 0]) for p in seen} == {offset}  # same offset, text and speech pass
    obj = objective_from_flags(model, contrastive_training=True, contrastive_layer="all")
    seen.clear()
    obj(model, contrastive_batch(model, tok))
    assert seen == [None, None]


def test_position_shift_changes_nothing_on_llama_but_rounding(tiny_model):
    """Rotary embeddings make attention depend on relative positions only: one offset added to every
    position of a sequence leaves every hidden state, and so the loss and its gradient, unchanged."""
    model, tok = tiny_model
    model.eval()  # no dropout: both passes see the same projector outputs
    batch = contrastive_batch(model, tok)
    plain = AverageContrastive([0, 1, 2])
    shifted = AverageContrastive([0, 1, 2], max_position_shift=400)

    def run(objective, seed):
        random.seed(seed)
        model.zero_grad()
        loss, terms = weighted_loss(ObjectiveSet([objective]), model, batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.projector.parameters() if p.grad is not None])
        return loss.detach(), grads

    ref_loss, ref_grad = run(plain, 0)
    for seed in range(3):  # three different offsets, up to 399
        loss, grad = run(shifted, seed)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        # fp32 rounding of cos/sin at other positions: ~1e-6 relative to the gradient's size
        assert float((grad - ref_grad).norm() / ref_grad.norm()) < 1e-4
    # ...while absolute positions do matter: a shift inside a sequence changes the states.
    embeds = torch.randn(1, 6, model.llm_hidden_size)
    mask = torch.ones(1, 6, dtype=torch.long)
    a = model.hidden_states(embeds, mask, [2], torch.arange(6)[None])[2]
    b = model.hidden_states(embeds, mask, [2], torch.tensor([[0, 1, 2, 50, 51, 52]]))[2]
    assert not torch.allclose(a, b, atol=1e-3)


def test_learnable_temperature_is_the_objectives_and_trains(tiny_model):
    model, tok = tiny_model
    obj = objective_from_flags(
        model, contrastive_training=True, learnable_temperature=True, contrastive_temperature=0.2
    )
    assert not any("temperature" in n for n, _ in model.named_parameters())  # nothing grafted on the model
    (name, param), *rest = obj.named_parameters()
    assert not rest and name.endswith("log_temperature")
    assert obj.log_values()["temperature"] == pytest.approx(0.2)
    loss, _ = weighted_loss(obj, model, contrastive_batch(model, tok))
    loss.backward()
    assert param.grad is not None and param.grad != 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": []}, "at least one layer"),
        ({"layers": [0], "max_position_shift": -1}, "max_position_shift must be >= 0"),
        ({"layers": [0, 2], "layer_weights": {1: 0.5}}, r"layers \[1\] that are not compared"),
    ],
)
def test_contrastive_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AverageContrastive(**kwargs)


def test_layer_weights_become_term_weights():
    obj = AverageContrastive([2, 0, 2], layer_weights={2: 0.25})
    assert obj.layers == [0, 2] and obj.term_weights() == {
        "contrastive_layer_0": 1.0,
        "contrastive_layer_2": 0.25,
    }


def test_contrastive_needs_transcripts_and_one_segment_per_utterance(tiny_model):
    model, tok = tiny_model
    obj = AverageContrastive([0])
    no_text = speech_batch(model, tok, [8000, 6000])
    with pytest.raises(ValueError, match="needs transcripts"):
        obj(model, StepInputs(model, no_text))
    batch = contrastive_batch(model, tok, [8000, 6000])
    two_segments = {**batch, "audio_values": torch.cat([batch["audio_values"]] * 2)}
    two_segments["audio_lengths"] = torch.cat([batch["audio_lengths"]] * 2)
    with pytest.raises(ValueError, match="one audio segment per utterance: 4 segments for 2"):
        obj(model, StepInputs(model, two_segments))
