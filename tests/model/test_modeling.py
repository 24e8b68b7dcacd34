"""Model composition: encoders x projectors, splice, freezing, masks and padding."""

from __future__ import annotations

import pytest
import torch

from llava.model import apply_training_mode, build_model
from llava.model.projectors import build_projector
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config

PROJECTORS = {"qformer": TINY_QFORMER, "mlp": {"stack": 5}, "linear": {"stack": 5}}


def _batch(model, tokenizer, lengths):
    """Prompt + a run of audio tokens per utterance, right padded; one audio segment per row."""
    audio_id = model.config.audio_token_id
    rows = []
    for n in lengths:
        k = model.num_audio_tokens(int(n))
        rows.append(tokenizer("say:")["input_ids"] + [audio_id] * k + tokenizer(" ok")["input_ids"])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n) * 0.1
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == audio_id, -100)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        audio_values=audio,
        audio_lengths=torch.tensor(lengths),
    )


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
    batch = _batch(model, tok, [16000, 9000])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.projector.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.audio_tower.parameters())
    assert all(p.grad is None for p in model.language_model.parameters())


def test_qformer_output_length_is_windows_times_queries():
    proj = build_projector(
        "qformer", {**TINY_QFORMER, "num_queries": 3}, encoder_dim=8, llm_dim=16, frame_rate=50.0
    )
    assert proj.window == 17  # round(50 * 0.333)
    feats = torch.randn(3, 40, 8)
    lengths = torch.tensor([40, 17, 18])
    mask = torch.arange(40)[None] < lengths[:, None]
    embeds, out_mask = proj(feats, mask)
    windows = -(-lengths // 17)  # ceil: 3, 1, 2
    assert embeds.shape == (3, 3 * 3, 16)
    assert out_mask.sum(1).tolist() == (windows * 3).tolist()
    assert proj.output_lengths(lengths).tolist() == (windows * 3).tolist()


def test_paper_qformer_parameter_count():
    proj = build_projector("qformer", {}, encoder_dim=1024, llm_dim=4096, frame_rate=50.0)
    n = sum(p.numel() for p in proj.parameters())
    assert 42.0e6 < n < 43.0e6, n


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


def test_frame_mask_matches_lengths(tiny_tokenizer):
    model, _ = build_model(tiny_encoder_config("hubert"), tiny_llm_config(), tokenizer=tiny_tokenizer)
    feats, mask = model.audio_tower(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
    assert feats.shape[:2] == mask.shape
    assert mask.sum(1).tolist() == [
        49,
        24,
    ]  # conv stack of HuBERT: 320-sample stride, 400-sample receptive field


def test_placeholder_count_mismatch_raises(tiny_model):
    model, tok = tiny_model
    batch = _batch(model, tok, [16000])
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
    model(**_batch(model, tok, [16000, 12000])).loss.backward()
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
