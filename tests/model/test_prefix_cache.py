"""The frozen LLM's shared-prefix keys and values: same losses and gradients as a full pass."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.model.prefix_cache import shared_prefix_length
from llava.train.objectives.base import StepInputs
from llava.train.objectives.nwp import NwpObjective
from tests.helpers import speech_batch

AUDIO = 99


def _reference_prefix(ids: list[list[int]], mask: list[list[int]], labels: list[list[int]] | None) -> int:
    """Column by column, in plain Python."""
    n = 0
    width = len(ids[0])
    for t in range(width):
        column = [row[t] for row in ids]
        ok = len(set(column)) == 1 and AUDIO not in column and all(m[t] == 1 for m in mask)
        if labels is not None and t + 1 < width:
            ok = ok and all(row[t + 1] == IGNORE_INDEX for row in labels)
        if not ok:
            break
        n += 1
    return min(n, width - 1)


@pytest.mark.parametrize("case", range(40))
def test_shared_prefix_length_matches_a_column_scan(case):
    gen = torch.Generator().manual_seed(case)
    rows, width = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(2, 9, (1,), generator=gen))
    # A small alphabet and a common head make long shared prefixes likely.
    ids = torch.randint(0, 3, (rows, width), generator=gen)
    head = int(torch.randint(0, width + 1, (1,), generator=gen))
    ids[:, :head] = ids[:1, :head]
    ids[torch.rand(rows, width, generator=gen) < 0.1] = AUDIO
    mask = (torch.rand(rows, width, generator=gen) > 0.1).long()
    labels = ids.masked_fill(torch.rand(rows, width, generator=gen) < 0.7, IGNORE_INDEX)
    for lab in (None, labels):
        want = _reference_prefix(ids.tolist(), mask.tolist(), None if lab is None else lab.tolist())
        assert shared_prefix_length(ids, mask, AUDIO, lab) == want


def _system_batch(model, tok, lengths=(12000, 8000, 9000)):
    """speech_batch with a longer shared text turn in front (as a system turn would be)."""
    batch = speech_batch(model, tok, list(lengths), seed=3)
    head = torch.tensor(tok("answer the question about the audio")["input_ids"])
    b = batch["input_ids"].shape[0]
    batch["input_ids"] = torch.cat([head.expand(b, -1), batch["input_ids"]], 1)
    batch["attention_mask"] = torch.cat(
        [torch.ones(b, len(head), dtype=torch.long), batch["attention_mask"]], 1
    )
    # as in a chat batch, only the reply after the audio is labelled
    first_audio = int((batch["input_ids"][0] == model.config.audio_token_id).nonzero()[0])
    labels = torch.cat([torch.full((b, len(head)), IGNORE_INDEX), batch["labels"]], 1)
    labels[:, :first_audio] = IGNORE_INDEX
    batch["labels"] = labels
    return batch, first_audio


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = NwpObjective()(model, StepInputs(model, batch))["nwp"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _decoder_widths(model):
    widths = []
    layer = model.language_model.get_decoder().layers[0]
    return widths, layer.register_forward_pre_hook(lambda m, a, kw: widths.append((a or (kw["hidden_states"],))[0].shape[1]), with_kwargs=True)  # fmt: skip


def test_nwp_loss_and_projector_gradients_equal_a_full_pass(tiny_model):
    model, tok = tiny_model
    batch, head = _system_batch(model, tok)
    widths, hook = _decoder_widths(model)
    model.reuse_shared_prefix = False
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    model.reuse_shared_prefix = True
    skip = model.shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss, grads = _loss_and_grads(model, batch)
    hook.remove()
    assert skip == head  # everything before the first audio position
    assert model.prefix_cache.last_length == skip  # what the MFU estimate reads
    width = batch["input_ids"].shape[1]
    # full pass; the cached prefix (one row); the batch after it
    assert widths == [width, skip, width - skip]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert ref_grads.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    # a second batch with the same prefix reuses the entry (no prefix pass)
    widths, hook = _decoder_widths(model)
    _loss_and_grads(model, batch)
    hook.remove()
    assert widths == [width - skip] and model.prefix_cache.hits >= 1


def test_hidden_states_after_the_prefix_equal_the_full_pass(tiny_model):
    model, tok = tiny_model
    batch, _ = _system_batch(model, tok)
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["audio_values"], batch["audio_lengths"])
        skip = model.shared_prefix_length(batch["input_ids"], batch["attention_mask"])
        layers = [0, 1, model.num_llm_layers]
        full = model.hidden_states(embeds, batch["attention_mask"], layers)
        rest = model.hidden_states(
            embeds, batch["attention_mask"], layers, prefix_ids=batch["input_ids"][0, :skip]
        )
    keep = batch["attention_mask"][:, skip:].bool()
    for k in layers:
        assert rest[k].shape[1] == embeds.shape[1] - skip
        torch.testing.assert_close(rest[k][keep], full[k][:, skip:][keep], rtol=1e-5, atol=1e-5)


def test_reuse_is_off_where_it_could_change_the_result(tiny_model):
    model, tok = tiny_model
    batch, _ = _system_batch(model, tok)
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert model.shared_prefix_length(*args) > 0
    model.reuse_shared_prefix = False
    assert model.shared_prefix_length(*args) == 0
    model.reuse_shared_prefix = True
    # dropout active in the LLM: each step must draw its own masks on the prefix too
    model.language_model.config.attention_dropout = 0.1
    model.train()
    assert model.shared_prefix_length(*args) == 0
    model.eval()
    assert model.shared_prefix_length(*args) > 0
    model.language_model.config.attention_dropout = 0.0
    # a trainable LLM weight (LoRA, unfrozen LLM): the prefix's states depend on it
    weight = model.language_model.get_decoder().layers[0].mlp.up_proj.weight
    weight.requires_grad_(True)
    assert model.shared_prefix_length(*args) == 0
    weight.requires_grad_(False)
    # weights sharded across ranks (ZeRO-3 marks its parameters with ds_id): a miss on one rank only
    # would desynchronise the collective weight gathers
    weight.ds_id = 0
    assert model.shared_prefix_length(*args) == 0
    del weight.ds_id
    assert model.shared_prefix_length(*args) > 0
    # checkpointed decoder layers would drop a passed cache
    model.activation_checkpointing_enable()
    assert model.shared_prefix_length(*args) == 0


def test_new_llm_weights_are_not_served_stale_prefix_states(tiny_model):
    model, tok = tiny_model
    batch, _ = _system_batch(model, tok)
    with torch.no_grad():
        NwpObjective()(model, StepInputs(model, batch))
        misses = model.prefix_cache.misses
        model.language_model.get_decoder().layers[0].self_attn.k_proj.weight.mul_(1.5)  # e.g. a weight load
        cached = NwpObjective()(model, StepInputs(model, batch))["nwp"]
        model.reuse_shared_prefix = False
        full = NwpObjective()(model, StepInputs(model, batch))["nwp"]
    assert model.prefix_cache.misses == misses + 1
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
