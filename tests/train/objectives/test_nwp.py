"""Next-word prediction on the spliced sequence."""

from __future__ import annotations

import torch

from llava.train.objectives.base import StepInputs
from llava.train.objectives.nwp import MixedNwpObjective, NwpObjective
from tests.helpers import objective_from_flags, speech_batch, weighted_loss


def test_nwp_term_equals_full_logits_cross_entropy(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [12000, 8000])
    loss, terms = weighted_loss(objective_from_flags(model), model, batch)
    ref = model(**batch).loss  # HF's own shifted CE over the full logits
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert set(terms) == {"nwp"}
    batch["num_labelled"] = int((batch["labels"][:, 1:] != -100).sum())  # as the trainer's loader adds it
    torch.testing.assert_close(
        weighted_loss(objective_from_flags(model), model, batch)[0], ref, rtol=1e-5, atol=1e-6
    )


def test_nwp_runs_the_lm_head_on_labelled_positions_only(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [12000, 8000])
    rows = []
    head = model.language_model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    weighted_loss(objective_from_flags(model), model, batch)
    hook.remove()
    assert rows == [int((batch["labels"][:, 1:] != -100).sum())]


def test_mixed_nwp_is_nwp_on_interleaved_batches(tiny_model):
    model, tok = tiny_model
    assert (MixedNwpObjective.name, MixedNwpObjective.collator_mode) == ("mixed", "mixed")
    assert NwpObjective.collator_mode == "chat" and not NwpObjective.needs_transcript
    batch = speech_batch(model, tok, [9000, 7000])
    plain = NwpObjective()(model, StepInputs(model, batch))["nwp"]
    torch.testing.assert_close(MixedNwpObjective()(model, StepInputs(model, batch))["nwp"], plain)


def test_an_empty_batch_scores_zero(tiny_model):
    # Only beside a gathering objective on another rank: this rank has no rows but must take part.
    model, tok = tiny_model
    batch = speech_batch(model, tok, [8000])
    empty = {k: v[:0] for k, v in batch.items()}
    assert float(NwpObjective()(model, StepInputs(model, empty))["nwp"]) == 0.0
