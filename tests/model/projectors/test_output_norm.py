"""Projector output scale matched to the LLM's input embeddings (option output_norm)."""

from __future__ import annotations

import math

import pytest
import torch

from llava.model import build_model, load_pretrained_model, save_trainable
from llava.model.projectors import build_projector
from llava.model.projectors.output_norm import OutputNorm, mean_row_norm
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config


def test_mean_row_norm_matches_a_direct_computation_across_chunks():
    table = torch.randn(9000, 5) * torch.linspace(0.1, 3.0, 9000)[:, None]  # > one 8192-row chunk
    reference = sum(math.sqrt(sum(v * v for v in row)) for row in table.tolist()) / 9000
    assert mean_row_norm(table) == pytest.approx(reference, rel=1e-5)
    assert mean_row_norm(table.to(torch.bfloat16)) == pytest.approx(reference, rel=1e-2)
    with pytest.raises(ValueError, match="embedding table"):
        mean_row_norm(torch.zeros(3))
    with pytest.raises(ValueError, match="output_norm_target"):
        mean_row_norm(torch.empty(4, 3, device="meta"))


def test_rms_match_sets_every_norm_and_keeps_directions():
    norm = OutputNorm("rms_match", 6, target=0.5)
    x = torch.randn(3, 4, 6) * 20
    x[1, 2] = 0.0  # a zero row (e.g. padding) must stay zero, not become NaN
    y = norm(x)
    lengths = y.norm(dim=-1)
    live = torch.ones(3, 4, dtype=torch.bool)
    live[1, 2] = False
    assert torch.allclose(lengths[live], torch.full_like(lengths[live], 0.5), atol=1e-5)
    assert torch.equal(y[1, 2], torch.zeros(6))
    cos = torch.nn.functional.cosine_similarity(x[live], y[live], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert list(norm.parameters()) == []  # a fixed rescaling: nothing to learn or save


def test_layernorm_starts_at_the_target_norm_and_learns_its_gain():
    norm = OutputNorm("layernorm", 64, target=0.8)
    y = norm(torch.randn(10, 64) * 7 + 3)
    assert torch.allclose(y.norm(dim=-1), torch.full((10,), 0.8), rtol=1e-3)
    names = {n for n, p in norm.named_parameters() if p.requires_grad}
    assert names == {"norm.weight", "norm.bias"}


def test_unknown_kind_and_missing_target_are_errors_naming_the_option():
    with pytest.raises(ValueError, match=r"output_norm 'rms'.*'none', 'rms_match', 'layernorm'"):
        OutputNorm("rms", 4)
    with pytest.raises(RuntimeError, match="output_norm_target"):
        OutputNorm("rms_match", 4)(torch.ones(2, 4))
    with pytest.raises(ValueError, match="unknown projector output_norm"):
        build_projector("mlp", {"output_norm": "bogus"}, 8, 16, 50.0)


@pytest.mark.parametrize("projector,options", [("qformer", TINY_QFORMER), ("linear", {"stack": 5})])
def test_default_adds_nothing_to_the_projector_state(projector, options):
    """The paper's behaviour (output_norm none) keeps the checkpoint layout unchanged."""
    plain = build_projector(projector, options, 32, 64, 50.0)
    assert not any("output_norm" in k for k in plain.state_dict())
    assert plain.match_input_embeddings(torch.randn(10, 64)) is None


@pytest.mark.parametrize("kind", ["rms_match", "layernorm"])
def test_model_measures_the_llm_embeddings_and_reloads_the_same_scale(tmp_path, tiny_tokenizer, kind):
    torch.manual_seed(0)
    enc_dir, llm_dir = tmp_path / "enc", tmp_path / "llm"
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_type="qformer",
        projector_config={**TINY_QFORMER, "output_norm": kind},
        attn_implementation="eager",
    )
    table = model.language_model.get_input_embeddings().weight.detach()
    expected = table.norm(dim=-1).mean().item()
    assert model.config.projector_config["output_norm_target"] == pytest.approx(expected, rel=1e-5)

    model.eval()
    audio = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        embeds, mask = model.embed_audio(audio, lengths)
    assert torch.allclose(embeds[mask].norm(dim=-1), torch.full((int(mask.sum()),), expected), rtol=1e-3)

    # Saved and reloaded (against base weights on disk) the recorded scale is reused, not re-measured.
    model.audio_tower.model.save_pretrained(enc_dir)
    from llava.model.encoders import default_feature_extractor

    default_feature_extractor(model.audio_tower.model.config).save_pretrained(enc_dir)
    with torch.no_grad():
        model.language_model.get_input_embeddings().weight.mul_(3.0)  # a different table on disk
    model.language_model.save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)
    model.projector.requires_grad_(True)
    save_trainable(model, tmp_path / "ckpt")
    loaded, _ = load_pretrained_model(tmp_path / "ckpt", audio_encoder=str(enc_dir), llm=str(llm_dir))
    assert loaded.projector.output_norm.target == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        again, _ = loaded.embed_audio(audio, lengths)
    assert torch.allclose(again, embeds, atol=1e-5)
