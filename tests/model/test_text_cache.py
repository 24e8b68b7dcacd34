"""Pooled text-state cache: exact values, keys per LLM and layer set, use by the average objective."""

from __future__ import annotations

import logging

import torch

from llava.losses.contrastive import masked_mean_pool
from llava.model import apply_training_mode
from llava.model.feature_cache import namespace_of
from llava.model.text_cache import TextStateCache, attach_text_cache, llm_identity
from llava.train.objectives.base import ObjectiveSet
from llava.train.objectives.contrastive import AverageContrastive, WassersteinContrastive

TRANSCRIPTS = [[5, 9, 17, 33, 2], [44, 3], [7, 7, 81, 12]]


def _text_batch():
    width = max(map(len, TRANSCRIPTS))
    ids = torch.zeros(len(TRANSCRIPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(TRANSCRIPTS):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    return ids, mask


def _reference(model, layers, batched: bool):
    """Independent computation: the LLM pass and pooling, per transcript alone or as one batch."""
    ids, mask = _text_batch()
    with torch.no_grad():
        if batched:
            h = model.hidden_states(model.language_model.get_input_embeddings()(ids), mask, layers)
            return {k: masked_mean_pool(h[k], mask) for k in layers}
        out = {k: [] for k in layers}
        for t in TRANSCRIPTS:
            one = torch.tensor([t])
            h = model.hidden_states(
                model.language_model.get_input_embeddings()(one), torch.ones_like(one), layers
            )
            for k in layers:
                out[k].append(masked_mean_pool(h[k], torch.ones_like(one))[0])
        return {k: torch.stack(v) for k, v in out.items()}


def test_cold_and_warm_states_are_the_per_transcript_pooled_states(tiny_model, tmp_path):
    model, _ = tiny_model
    layers = [0, 1, 2]
    ids, mask = _text_batch()
    cold = TextStateCache.for_model(tmp_path, model, layers)
    states, pooled_mask = cold.pooled_states(model, ids, mask)
    assert (cold.stats.misses, cold.stats.written) == (3, 3)
    assert pooled_mask.shape == (3, 1) and pooled_mask.all()
    alone, batched = _reference(model, layers, False), _reference(model, layers, True)
    for k in layers:
        assert states[k].shape == (3, 1, 64)
        assert torch.equal(masked_mean_pool(states[k], pooled_mask), alone[k])  # exactly, after pooling
        torch.testing.assert_close(states[k][:, 0], batched[k], atol=1e-5, rtol=1e-5)
    warm = TextStateCache.for_model(tmp_path, model, layers)
    again, _ = warm.pooled_states(model, ids, mask)
    assert warm.stats.hits == 3 and warm.stats.misses == 0
    assert all(torch.equal(again[k], states[k]) for k in layers)


def test_namespace_covers_the_weights_up_to_the_deepest_layer(tiny_model):
    model, _ = tiny_model
    base = namespace_of(llm_identity(model, [0, 1]))
    assert namespace_of(llm_identity(model, [0, 1, 2])) != base
    decoder = model.language_model.get_decoder()
    with torch.no_grad():
        decoder.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # runs after layer 1's output: irrelevant
    assert namespace_of(llm_identity(model, [0, 1])) == base
    with torch.no_grad():
        decoder.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    assert namespace_of(llm_identity(model, [0, 1])) != base


def _contrastive_loss(model, objective, batch):
    terms = objective(model, batch)
    return sum(objective.weights[k] * v for k, v in terms.items())


def _contrastive_batch(model):
    ids, mask = _text_batch()
    g = torch.Generator().manual_seed(3)
    lengths = [9000, 12000, 7000]
    audio = torch.zeros(3, max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n, generator=g) * 0.1
    return {
        "input_ids": torch.zeros(3, 4, dtype=torch.long),
        "attention_mask": torch.ones(3, 4, dtype=torch.long),
        "audio_values": audio,
        "audio_lengths": torch.tensor(lengths),
        "text_input_ids": ids,
        "text_attention_mask": mask,
    }


def test_average_objective_reads_the_cache_with_the_same_loss(tiny_model, tmp_path):
    model, _ = tiny_model
    model.eval()
    batch = _contrastive_batch(model)
    objective = ObjectiveSet([AverageContrastive([0, 1, 2])])
    plain = _contrastive_loss(model, objective, batch)
    cache = attach_text_cache(model, tmp_path, objective)
    assert cache is not None and cache.layers == [0, 1, 2]
    cold = _contrastive_loss(model, objective, batch)
    warm = _contrastive_loss(model, objective, batch)
    assert cache.stats.written == 3 and cache.stats.hits == 3
    assert torch.equal(cold, warm)
    torch.testing.assert_close(cold, plain, atol=1e-5, rtol=1e-5)
    cold.backward()  # the speech side still trains
    assert any(p.grad is not None for p in model.projector.parameters())

    shifted = ObjectiveSet([AverageContrastive([0, 1, 2], max_position_shift=400)])
    _contrastive_loss(model, shifted, batch)  # position shift: computed, not cached
    other = ObjectiveSet([AverageContrastive([0, 2])])
    _contrastive_loss(model, other, batch)  # another layer set: not this cache's
    assert cache.stats.hits + cache.stats.misses == 6


def test_cache_is_not_attached_where_it_would_not_be_exact(tiny_model, tmp_path, caplog):
    model, _ = tiny_model
    with caplog.at_level(logging.INFO, logger="llava.model.text_cache"):
        assert attach_text_cache(model, tmp_path, ObjectiveSet([WassersteinContrastive([0, 1])])) is None
        assert "no average contrastive objective" in caplog.text
        apply_training_mode(model, freeze_llm=False)
        assert attach_text_cache(model, tmp_path, ObjectiveSet([AverageContrastive([0, 1])])) is None
        assert "the LLM trains" in caplog.text
    assert model.text_cache is None
