"""Diagnostics of the layer-wise contrastive loss: per-layer gradient norms at the projector against a
separate computation, pairwise cosines, the paper-scale output-norm numbers."""

from __future__ import annotations

import math

import pytest
import torch

from llava.demo.diagnose import (
    ProbeSetting,
    deep_layer_weights,
    gradient_report,
    pairwise_cosine,
    real_scale_numbers,
)
from llava.losses.contrastive import layerwise_contrastive_loss
from llava.train.train import parse_args


def test_pairwise_cosine():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    pairs = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]  # (0,1), (0,2), (1,2)
    assert pairwise_cosine(x) == pytest.approx(sum(pairs) / 3)
    assert pairwise_cosine(torch.ones(4, 3)) == pytest.approx(1.0)


def _contrastive_batch(model, tokenizer, n=3):
    torch.manual_seed(1)
    lengths = torch.tensor([16000, 12000, 9000][:n])
    audio = torch.randn(n, 16000) * 0.1
    texts = ["the quick brown fox", "a small cat sleeps", "one two three"][:n]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return {
        "audio_values": audio,
        "audio_lengths": lengths,
        "text_input_ids": enc["input_ids"],
        "text_attention_mask": enc["attention_mask"],
    }


def test_gradient_report_matches_a_separate_backward_per_layer(tiny_model):
    model, tokenizer = tiny_model
    model.eval()  # no dropout: both computations see the same function
    batch = _contrastive_batch(model, tokenizer)
    layers = [0, 1, 2]
    weights = {0: 1.0, 1: 0.5, 2: 0.25}
    report = gradient_report(model, batch, layers, weights)
    params = [p for p in model.projector.parameters() if p.requires_grad]
    for k in layers:
        model.zero_grad()
        embeds, mask = model.embed_audio(batch["audio_values"], batch["audio_lengths"])
        with torch.no_grad():
            text = model.hidden_states(
                model.language_model.get_input_embeddings()(batch["text_input_ids"]),
                batch["text_attention_mask"],
                [k],
            )
        speech = model.hidden_states(embeds, mask.long(), [k])
        loss, _ = layerwise_contrastive_loss(text, batch["text_attention_mask"], speech, mask.long())
        (weights[k] * loss).backward()
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
        assert report["layers"][k]["grad_norm"] == pytest.approx(norm, rel=1e-4)
        assert report["layers"][k]["loss"] == pytest.approx(float(loss), rel=1e-5)
    shares = [v["grad_share"] for v in report["layers"].values()]
    assert sum(shares) == pytest.approx(1.0)
    table = model.language_model.get_input_embeddings().weight
    assert report["token_embedding_norm"] == pytest.approx(float(table.norm(dim=-1).mean()), rel=1e-5)


def test_probe_settings_are_training_flags(tmp_path):
    layers = [0, 5, 10, 32]
    assert deep_layer_weights(layers, 0.05) == {0: 1.0, 5: 0.05, 10: 0.05, 32: 0.05}
    setting = ProbeSetting("x", output_norm="rms_match", layer_weights=deep_layer_weights(layers, 0.05))
    model_args, _, loss_args = parse_args(["--output_dir", str(tmp_path), "--contrastive_layer", "all", *setting.flags()])[:3]  # fmt: skip
    assert model_args.projector_config()["output_norm"] == "rms_match"
    assert loss_args.contrastive_layer_weights == "0:1,5:0.05,10:0.05,32:0.05"


def test_real_scale_numbers():
    numbers = real_scale_numbers(rows=256, windows=2)
    assert numbers["llm_embedding_table_shape"] == [128256, 4096]
    assert numbers["llm_row_norm_sampled"] == pytest.approx(0.02 * 64, rel=0.02)
    # post-LayerNorm Q-Former output (unit variance) through a default Linear(768, 4096): sqrt(4096 / 3)
    assert numbers["qformer_output_norm_random_init"] == pytest.approx(math.sqrt(4096 / 3), rel=0.05)
    assert numbers["ratio"] > 25
