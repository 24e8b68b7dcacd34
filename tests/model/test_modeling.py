"""Model composition: encoders x projectors, splice, freezing, masks and padding."""

from __future__ import annotations

import pytest
import torch

from llava.model import apply_training_mode, build_model
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config
from tests.helpers import speech_batch

PROJECTORS = {"qformer": TINY_QFORMER, "mlp": {"stack": 5}, "linear": {"stack": 5}}


@pytest.mark.parametrize("encoder", ["hubert", "wavlm", "wav2vec2", "whisper"])
@pytest.mark.parametrize("projector", sorted(PROJECTORS))
def test_every_encoder_projector_pair_trains(tiny_tokenizer, encoder, projector):
    model, tok = build_model(
        tiny_encoder_config(encoder),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_type=projector,
        projector_config=PROJECTORS[projector],
        attn_implementation="eager",
    )
    apply_training_mode(model)
    model.train()
    batch = speech_batch(model, tok, [16000, 9000])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.projector.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.audio_tower.parameters())
    assert all(p.grad is None for p in model.language_model.parameters())


@pytest.mark.parametrize("encoder", ["hubert", "whisper"])
@pytest.mark.parametrize("projector", sorted(PROJECTORS))
def test_projected_output_same_alone_and_in_padded_batch(tiny_tokenizer, encoder, projector):
    model, _ = build_model(
        tiny_encoder_config(encoder),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_type=projector,
        projector_config=PROJECTORS[projector],
        attn_implementation="eager",
    )
    model.eval()
    short = torch.randn(7000) * 0.1
    long = torch.randn(20000) * 0.1
    alone, alone_mask = model.embed_audio(short[None], torch.tensor([7000]))
    batch = torch.zeros(2, 20000)
    batch[0] = long
    batch[1, :7000] = short
    both, both_mask = model.embed_audio(batch, torch.tensor([20000, 7000]))
    n = int(alone_mask.sum())
    assert n == model.num_audio_tokens(7000) == int(both_mask[1].sum())
    torch.testing.assert_close(both[1, :n], alone[0, :n], atol=1e-5, rtol=1e-4)


def test_placeholder_count_mismatch_raises(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [16000])
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([[model.config.audio_token_id]])], 1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
    batch.pop("labels")
    with pytest.raises(ValueError, match="placeholder count mismatch"):
        model(**batch)
    with pytest.raises(ValueError, match="no audio was given"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_frozen_weights_identical_after_step_projector_changed(tiny_model):
    model, tok = tiny_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**speech_batch(model, tok, [16000, 12000])).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n.startswith("projector."):
            continue
        assert torch.equal(p, before[n]), n
    changed = [
        n for n, p in model.named_parameters() if n.startswith("projector.") and not torch.equal(p, before[n])
    ]
    assert changed


def test_frozen_encoder_stays_in_eval_mode(tiny_model):
    model, _ = tiny_model
    model.train()
    assert model.projector.training and model.language_model.training is True
    assert not any(m.training for m in model.audio_tower.model.modules())
    # Dropout/SpecAugment off: two forward passes in "training" mode give the same features.
    x = torch.randn(1, 16000) * 0.1
    a, _ = model.audio_tower(x, torch.tensor([16000]))
    b, _ = model.audio_tower(x, torch.tensor([16000]))
    assert torch.equal(a, b)


def test_unknown_projector_and_option_fail_before_loading(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown projector type 'transformer'"):
        build_model("/does/not/exist", "/nor/this", tokenizer=tiny_tokenizer, projector_type="transformer")
    with pytest.raises(ValueError, match=r"unknown qformer projector option\(s\) \['num_querys'\]"):
        build_model(
            "/does/not/exist", "/nor/this", tokenizer=tiny_tokenizer, projector_config={"num_querys": 4}
        )


def test_unknown_encoder_type_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="unsupported audio encoder type 'bert'"):
        build_model(dict(model_type="bert", hidden_size=32), tiny_llm_config(), tokenizer=tiny_tokenizer)


def test_encoder_layer_selects_hidden_state(tiny_tokenizer):
    model, _ = build_model(
        tiny_encoder_config("hubert"), tiny_llm_config(), tokenizer=tiny_tokenizer, encoder_layer=1
    )
    model.eval()
    x = torch.randn(1, 8000) * 0.1
    feats, _ = model.audio_tower(x, torch.tensor([8000]))
    inputs = model.audio_tower._featurize(x, torch.tensor([8000]))
    ref = model.audio_tower.model(**inputs, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(feats, ref)


# ----------------------------------------------------------------------------- operations objectives use
def _deep_model(tiny_tokenizer, layers=4):
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        {**tiny_llm_config(), "num_hidden_layers": layers},
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    return apply_training_mode(model), tok


def _layer_calls(model):
    calls = []
    decoder = model.language_model.get_decoder()
    hooks = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
        for i, block in enumerate(decoder.layers)
    ]
    hooks.append(decoder.norm.register_forward_hook(lambda m, a, o: calls.append("norm")))
    return calls, hooks


@pytest.mark.parametrize("layers", [[0], [1], [0, 2], [1, 3], [0, 2, 4], [4]])
def test_hidden_states_equal_a_full_pass_and_stop_at_the_deepest_layer(tiny_tokenizer, layers):
    model, _ = _deep_model(tiny_tokenizer)
    model.eval()
    embeds = torch.randn(2, 7, model.llm_hidden_size)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        ref = model.language_model.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True
        ).hidden_states
        calls, hooks = _layer_calls(model)
        got = model.hidden_states(embeds, mask, layers)
        for h in hooks:
            h.remove()
    assert sorted(got) == layers
    for k in layers:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)  # the very same computation
    deepest = max(layers)
    assert calls == list(range(deepest)) + (["norm"] if deepest == 4 else [])
    assert len(model.language_model.get_decoder().layers) == 4  # restored after the pass


def test_hidden_states_gradients_match_with_activation_checkpointing(tiny_tokenizer):
    model, _ = _deep_model(tiny_tokenizer)
    model.train()
    embeds = torch.randn(2, 5, model.llm_hidden_size, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.long)

    def grad():
        embeds.grad = None
        out = model.hidden_states(embeds, mask, [1, 3])
        (out[1].sum() + out[3].pow(2).sum()).backward()
        return embeds.grad.clone()

    plain = grad()
    model.activation_checkpointing_enable()
    assert model.language_model.is_activation_checkpointing
    torch.testing.assert_close(grad(), plain)


def test_labelled_logits_equal_the_full_logits_at_labelled_positions(tiny_model):
    model, tok = tiny_model
    batch = speech_batch(model, tok, [12000, 8000])
    last = model.num_llm_layers
    with torch.no_grad():
        embeds = model.splice(
            batch["input_ids"], *model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        )
        hidden = model.hidden_states(embeds, batch["attention_mask"], [last])[last]
        full = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        logits, targets = model.labelled_logits(hidden, batch["labels"])
        again, _ = model.labelled_logits(hidden, batch["labels"], num_labelled=targets.shape[0])
    # Reference by loops: position t predicts labels[t + 1].
    ref_logits, ref_targets = [], []
    for b in range(full.shape[0]):
        for t in range(full.shape[1] - 1):
            if batch["labels"][b, t + 1] != -100:
                ref_logits.append(full[b, t])
                ref_targets.append(int(batch["labels"][b, t + 1]))
    assert targets.tolist() == ref_targets
    torch.testing.assert_close(logits, torch.stack(ref_logits), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, logits)
    with pytest.raises(ValueError, match="no labelled token"):
        model.labelled_logits(hidden, torch.full_like(batch["labels"], -100))


def test_splice_places_segments_in_order(tiny_model):
    model, tok = tiny_model
    audio_id = model.config.audio_token_id
    embeds = torch.randn(3, 4, model.llm_hidden_size)  # 3 segments of up to 4 outputs
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    # row 0: segments 0 and 1; row 1: segment 2 (then padding)
    ids = torch.tensor(
        [[5, audio_id, audio_id, 6, audio_id, audio_id, audio_id, 7], [8, audio_id, 9, 0, 0, 0, 0, 0]]
    )
    out = model.splice(ids, embeds, mask)
    table = model.language_model.get_input_embeddings()
    expected = table(ids.masked_fill(ids == audio_id, 0)).detach().clone()
    expected[0, 1], expected[0, 2] = embeds[0, 0], embeds[0, 1]
    expected[0, 4], expected[0, 5], expected[0, 6] = embeds[1, 0], embeds[1, 1], embeds[1, 2]
    expected[1, 1] = embeds[2, 0]
    torch.testing.assert_close(out, expected)


def test_padding_windows_add_no_gradient(tiny_model):
    """Padding windows are computed (no data-dependent shapes) but zeroed: the projector's gradient
    from a padded batch equals the sum of the gradients of its utterances alone."""
    model, _ = tiny_model
    model.eval()
    long, short = torch.randn(20000) * 0.1, torch.randn(7000) * 0.1
    weights = torch.randn(model.llm_hidden_size)

    def grads(values, lengths):
        model.zero_grad()
        embeds, mask = model.embed_audio(values, lengths)
        assert not embeds[~mask].any()  # padding outputs are exactly zero
        (embeds[mask] @ weights).pow(2).sum().backward()
        return [p.grad.clone() for p in model.projector.parameters() if p.grad is not None]

    batch = torch.zeros(2, 20000)
    batch[0], batch[1, :7000] = long, short
    together = grads(batch, torch.tensor([20000, 7000]))
    alone = [
        a + b
        for a, b in zip(grads(long[None], torch.tensor([20000])), grads(short[None], torch.tensor([7000])))
    ]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
