"""The objective contract: shared step inputs, the objective set, the temperature."""

from __future__ import annotations

import math

import pytest
import torch

from llava.train.objectives.base import Objective, ObjectiveSet, StepInputs, Temperature
from tests.helpers import contrastive_batch, objective_from_flags, speech_batch


def test_audio_is_encoded_once_per_batch(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls = []
    original = model.embed_audio
    monkeypatch.setattr(model, "embed_audio", lambda *a: calls.append(1) or original(*a))
    obj = objective_from_flags(
        model, contrastive_training=True, contrastive_layer="all", contr_asr_combine_loss=True
    )
    obj(model, contrastive_batch(model, tok))
    assert calls == [1]


def test_contrastive_batch_of_one_is_skipped_not_scored(tiny_model):
    model, tok = tiny_model
    obj = objective_from_flags(model, contrastive_training=True)
    assert (
        obj.min_rows() == 2 and obj.skip_reason(1) == "too_few_pairs" and obj.skip_reason(0) == "empty_batch"
    )
    assert obj.skip_reason(2) is None
    assert obj.min_rows(world=2) == 2  # no gathering: each rank needs its own negatives
    gathered = objective_from_flags(model, contrastive_training=True, contrastive_gather=True)
    assert gathered.min_rows(world=2) == 1 and gathered.skip_reason(0, world=2) is None
    assert objective_from_flags(model).skip_reason(1) is None
    with pytest.raises(ValueError, match="at least 2"):  # the loss itself still refuses one pair
        obj(model, contrastive_batch(model, tok, [12000]))


class _Fixed(Objective):
    """A stand-in objective returning fixed terms (the set's bookkeeping, not a loss)."""

    def __init__(self, name: str, terms: dict[str, float], mode: str = "chat", min_pairs: int = 1) -> None:
        super().__init__()
        self.name, self.collator_mode, self.min_pairs = name, mode, min_pairs
        self.terms = terms

    def term_weights(self) -> dict[str, float]:
        return dict(self.terms)

    def forward(self, model, step: StepInputs) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(float(len(k))) for k in self.terms}


def test_objective_set_weights_terms_by_objective_and_term():
    s = ObjectiveSet([_Fixed("a", {"a1": 1.0, "a2": 0.25}), _Fixed("b", {"b": 1.0})], {"a": 2.0})
    assert s.names == ["a", "b"] and s.weights == {"a1": 2.0, "a2": 0.5, "b": 1.0}
    assert s(None, {"input_ids": torch.zeros(2, 3)}) == {"a1": 2.0, "a2": 2.0, "b": 1.0}
    assert s.collator_mode == "chat" and not s.needs_transcript and not s.transcript_special_tokens
    assert ObjectiveSet([_Fixed("a", {"a": 1}), _Fixed("b", {"b": 1}, min_pairs=3)]).min_rows() == 3


@pytest.mark.parametrize(
    "parts, weights, match",
    [
        ([], None, "at least one objective"),
        ([_Fixed("a", {"a": 1.0})], {"z": 1.0}, r"not in the set: \['z'\]"),
        ([_Fixed("a", {"a": 1.0}), _Fixed("m", {"m": 1.0}, mode="mixed")], None, "different batches"),
        ([_Fixed("a", {"a": 1.0}), _Fixed("a", {"b": 1.0})], None, "'a' appears twice"),
        ([_Fixed("a", {"t": 1.0}), _Fixed("b", {"t": 1.0})], None, "term named 't'"),
    ],
)
def test_objective_set_refuses_sets_it_cannot_combine(parts, weights, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveSet(parts, weights)


def test_temperature_fixed_or_learnable():
    fixed = Temperature(0.2)
    assert fixed() == 0.2 and fixed.log_values() == {} and list(fixed.parameters()) == []
    learned = Temperature(0.2, learnable=True)
    (param,) = learned.parameters()
    assert float(learned().detach()) == pytest.approx(0.2) and learned.log_values() == {
        "temperature": pytest.approx(0.2)
    }
    with torch.no_grad():
        param.fill_(math.log(1e-4))
    assert float(learned().detach()) == pytest.approx(0.01)  # clamped: the logits scale stays bounded
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Temperature(0.0)


def test_step_inputs_without_audio_and_spliced_once(tiny_model, monkeypatch):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [8000, 6000])
    step = StepInputs(model, batch)
    assert step.batch_size == 2
    calls = []
    original = model.splice
    monkeypatch.setattr(model, "splice", lambda *a: calls.append(1) or original(*a))
    assert step.spliced is step.spliced and calls == [1]
    # a mixed batch whose utterances all became text carries audio_values [0, S]: no encoder pass
    empty = StepInputs(model, {**batch, "audio_values": torch.zeros(0, 5)})
    assert empty.audio is None
