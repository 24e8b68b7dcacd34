"""The analytic FLOP model against torch's own FLOP counter on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from llava.model.flops import (
    EncoderShape,
    LLMPass,
    LLMShape,
    QFormerShape,
    device_peak_tflops,
    llm_pass_flops,
    step_flops,
)
from llava.model.projectors import build_projector
from tests.conftest import tiny_encoder_config, tiny_llm_config


def _config(d: dict):
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def llm():
    cfg = _config(tiny_llm_config(vocab_size=300))
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").requires_grad_(False)


def test_llm_forward_and_backward_match_the_counter(llm):
    shape = LLMShape.from_config(llm.config)
    x = torch.randn(3, 11, shape.hidden)
    mask = torch.ones(3, 11, dtype=torch.long)

    def forward():
        return llm(inputs_embeds=x, attention_mask=mask).logits

    counted = _count(forward)
    expected = llm_pass_flops(
        shape, LLMPass(rows=3, length=11, layers=shape.layers, grad=False, head_positions=33)
    )
    assert counted == pytest.approx(expected.model, rel=1e-9)

    x.requires_grad_(True)  # frozen weights, gradient to the inputs (as towards the projector)
    counted = _count(lambda: forward().sum().backward())
    expected = llm_pass_flops(
        shape, LLMPass(rows=3, length=11, layers=shape.layers, grad=True, head_positions=33)
    )
    assert counted == pytest.approx(expected.model, rel=1e-9)
    ckpt = llm_pass_flops(
        shape, LLMPass(3, 11, shape.layers, grad=True, checkpointed=True, head_positions=33)
    )
    assert ckpt.model == expected.model and ckpt.executed > expected.executed


def test_a_pass_after_a_cached_prefix_matches_the_counter(llm):
    from transformers import DynamicCache

    shape = LLMShape.from_config(llm.config)
    rows, length, prefix = 3, 11, 4
    x = torch.randn(rows, length, shape.hidden)
    with torch.no_grad():
        kv = llm.model(inputs_embeds=x[:1, :prefix], use_cache=True).cache
    data = [(lay.keys.expand(rows, -1, -1, -1), lay.values.expand(rows, -1, -1, -1)) for lay in kv.layers]
    rest = x[:, prefix:].clone().requires_grad_(True)
    mask = torch.ones(rows, length, dtype=torch.long)

    def step():
        out = llm.model(inputs_embeds=rest, attention_mask=mask, cache=DynamicCache(data)).last_hidden_state
        out.sum().backward()

    expected = llm_pass_flops(shape, LLMPass(rows, length, shape.layers, grad=True, cached_prefix=prefix))
    assert _count(step) == pytest.approx(expected.model, rel=1e-9)


def test_encoder_forward_matches_the_counter():
    cfg = _config(tiny_encoder_config("hubert"))
    model = AutoModel.from_config(cfg, attn_implementation="eager").eval()
    shape = EncoderShape.from_config(cfg)
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        counted = _count(lambda: model(wave))
    assert shape.frames(8000) == model._get_feat_extract_output_lengths(8000)
    # The positional convolution computes one extra frame (even kernel) that is then dropped.
    assert counted == pytest.approx(shape.forward(2, 8000), rel=0.02)


def test_qformer_forward_matches_the_counter():
    settings = dict(
        num_queries=2, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0
    )
    proj = build_projector("qformer", settings, encoder_dim=24, llm_dim=40, frame_rate=50.0)
    proj.eval().requires_grad_(False)
    proj.qformer.set_attn_implementation("eager")  # the counter does not see the CPU SDPA kernel
    feats = torch.randn(2, 51, 24)  # 3 windows of 17 frames each
    mask = torch.ones(2, 51, dtype=torch.bool)
    with torch.no_grad():
        counted = _count(lambda: proj(feats, mask))
    shape = QFormerShape(layers=2, hidden=32, ffn=64, queries=2, window=17, encoder_dim=24, llm_dim=40)
    assert counted == pytest.approx(shape.forward(6), rel=1e-9)


def test_step_without_encoder_counts_only_projector_and_llm(llm):
    shape = LLMShape.from_config(llm.config)
    q = QFormerShape(layers=2, hidden=32, ffn=64, queries=2, window=17, encoder_dim=24, llm_dim=shape.hidden)
    passes = [LLMPass(rows=4, length=10, layers=2, grad=True)]
    total = step_flops(None, q, shape, 4, 16000, passes, projector_windows=12)
    assert total.model == pytest.approx(3 * q.forward(12) + llm_pass_flops(shape, passes[0]).model)


def test_device_peaks():
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("cpu") is None
