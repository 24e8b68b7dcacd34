"""`--torch_compile_llm`: compiled decoder layers give the same hidden states and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llava.model.compile import compile_llm


def _passes(model, embeds, mask):
    """Speech-pass-like: hidden states of every layer and the gradient w.r.t. the inputs."""
    embeds = embeds.clone().requires_grad_(True)
    out = model.language_model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states)
    hidden.pow(2).mean().backward()
    return hidden.detach(), embeds.grad


def test_compiled_layers_match_eager(tiny_model):
    model, _ = tiny_model
    torch._dynamo.reset()
    inputs = [(torch.randn(2, n, 64), torch.ones(2, n, dtype=torch.long)) for n in (7, 12)]
    inputs[1][1][1, 9:] = 0  # a padded row
    reference = [_passes(model, e, m) for e, m in inputs]
    # The eager backend traces with dynamo (what can break) without inductor's minutes of C++ compiling.
    assert compile_llm(model, backend="eager") == model.num_llm_layers
    assert compile_llm(model, backend="eager") == model.num_llm_layers  # idempotent
    layer = model.language_model.get_decoder().layers[0]
    assert layer._llava_compiled and layer.forward is not type(layer).forward
    for (e, m), (h_ref, g_ref) in zip(inputs, reference):  # two lengths: dynamic shapes
        h, g = _passes(model, e, m)
        torch.testing.assert_close(h, h_ref)
        torch.testing.assert_close(g, g_ref)
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # dynamo really traced the layers


def test_decoder_without_layers_is_an_error():
    class NoLayers(nn.Module):
        def get_decoder(self):
            return nn.Linear(2, 2)

    holder = nn.Module()
    holder.language_model = NoLayers()
    with pytest.raises(ValueError, match="torch_compile_llm"):
        compile_llm(holder)
