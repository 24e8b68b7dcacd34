"""An analytic FLOP model of one training micro-batch (encoder -> projector -> LLM passes).

Used for the MFU estimate in the training logs (`llava.train.throughput`) and for the paper-shape
comparison in `benchmarks/flop_model.py`. Conventions:
- one multiply-add = 2 FLOPs; only matrix products are counted (norms, activations, softmax and
  elementwise work are a few percent at these widths);
- attention scores and the weighted sum are counted over the full padded [L, L] square;
- backward: a weight that trains costs 2x its forward (input and weight gradients), a frozen weight
  that gradient flows through costs 1x (input gradient only), an attention product 2x (both operands
  are activations);
- activation checkpointing re-runs each checkpointed decoder layer's forward once in backward
  (`executed` counts it, `model` does not: MFU uses model FLOPs, as is usual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMShape:
    """A Llama-style decoder: GQA attention, gated MLP, untied or tied LM head (same FLOPs)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: Any) -> LLMShape:
        return cls(
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            ffn=cfg.intermediate_size,
            heads=cfg.num_attention_heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            vocab=cfg.vocab_size,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_linear(self, tokens: float) -> float:
        """Forward FLOPs of one layer's weight products for `tokens` positions."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * tokens * (d * d + 2 * d * kv + d * d + 3 * d * self.ffn)

    def layer_attention(self, rows: int, length: int) -> float:
        """Forward FLOPs of QK^T and AV for `rows` sequences of padded `length`."""
        return 2 * 2 * rows * self.heads * length * length * self.head_dim


@dataclass(frozen=True)
class EncoderShape:
    """A wav2vec2-family encoder (HuBERT, WavLM, wav2vec2): conv feature extractor + transformer."""

    layers: int  # transformer layers run (up to the output layer)
    hidden: int
    ffn: int
    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    pos_kernel: int
    pos_groups: int

    @classmethod
    def from_config(cls, cfg: Any, output_layer: int = -1) -> EncoderShape:
        n = cfg.num_hidden_layers
        return cls(
            layers=n if output_layer in (-1, n) else (output_layer % (n + 1)),
            hidden=cfg.hidden_size,
            ffn=cfg.intermediate_size,
            conv_dim=tuple(cfg.conv_dim),
            conv_kernel=tuple(cfg.conv_kernel),
            conv_stride=tuple(cfg.conv_stride),
            pos_kernel=cfg.num_conv_pos_embeddings,
            pos_groups=cfg.num_conv_pos_embedding_groups,
        )

    def frames(self, samples: int) -> int:
        n = samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = max(0, (n - k) // s + 1)
        return n

    def forward(self, rows: int, samples: int) -> float:
        """Forward FLOPs for `rows` waveforms padded to `samples`."""
        flops, n, c_in = 0.0, samples, 1
        for c_out, k, s in zip(self.conv_dim, self.conv_kernel, self.conv_stride):
            n = max(0, (n - k) // s + 1)
            flops += 2 * n * c_in * c_out * k
            c_in = c_out
        t, d = n, self.hidden
        flops += 2 * t * c_in * d  # feature projection
        flops += 2 * t * d * (d // self.pos_groups) * self.pos_kernel  # convolutional positions
        per_layer = 2 * t * (4 * d * d + 2 * d * self.ffn) + 2 * 2 * t * t * d
        return rows * (flops + self.layers * per_layer)


@dataclass(frozen=True)
class QFormerShape:
    """The window Q-Former projector: `queries` queries per window of `window` encoder frames."""

    layers: int
    hidden: int
    ffn: int
    queries: int
    window: int
    encoder_dim: int
    llm_dim: int

    def forward(self, windows: int) -> float:
        q, w, h, de = self.queries, self.window, self.hidden, self.encoder_dim
        self_attn = 2 * q * 4 * h * h + 2 * 2 * q * q * h
        cross = 2 * q * 2 * h * h + 2 * w * 2 * de * h + 2 * 2 * q * w * h
        ffn = 2 * q * 2 * h * self.ffn
        return windows * (self.layers * (self_attn + cross + ffn) + 2 * q * h * self.llm_dim)


@dataclass(frozen=True)
class LLMPass:
    """One pass of a padded batch through (part of) the LLM."""

    rows: int
    length: int  # padded sequence length
    layers: int  # decoder layers run (0 = embeddings only)
    grad: bool  # gradient flows back through it (to the projector or inputs)
    checkpointed: bool = False  # each layer's forward re-runs in backward
    head_positions: int = 0  # positions that go through the LM head
    cached_prefix: int = 0  # leading positions whose keys and values come from the prefix cache


@dataclass
class FlopCount:
    model: float = 0.0  # what the step needs (MFU numerator)
    executed: float = 0.0  # what runs, recomputation included

    def add(self, model: float, executed: float | None = None) -> None:
        self.model += model
        self.executed += model if executed is None else executed


def llm_pass_flops(shape: LLMShape, p: LLMPass) -> FlopCount:
    """FLOPs of one LLM pass (LM head weights are frozen, like the rest of the LLM). A cached prefix
    counts as a hit (its one-off pass is not counted), like the feature and text caches."""
    run = p.length - p.cached_prefix  # positions the pass computes; they attend to all `length` keys
    lin = p.layers * shape.layer_linear(p.rows * run)
    att = p.layers * shape.layer_attention(p.rows, p.length) * run / p.length
    head = 2 * p.head_positions * shape.hidden * shape.vocab
    fwd = lin + att + head
    bwd = (lin + 2 * att + head) if p.grad else 0.0
    recompute = (lin + att) if (p.grad and p.checkpointed) else 0.0
    out = FlopCount()
    out.add(fwd + bwd, fwd + bwd + recompute)
    return out


def step_flops(
    encoder: EncoderShape | None,
    projector: QFormerShape | None,
    llm: LLMShape,
    audio_rows: int,
    audio_samples: int,
    passes: list[LLMPass],
    projector_windows: int | None = None,
) -> FlopCount:
    """One micro-batch: the frozen encoder forward (None when its features come from a cache), the
    trainable projector forward + backward, and the LLM passes."""
    total = FlopCount()
    if encoder is not None:
        total.add(encoder.forward(audio_rows, audio_samples))
    if projector is not None:
        if projector_windows is None:
            frames = encoder.frames(audio_samples) if encoder is not None else 0
            projector_windows = audio_rows * math.ceil(frames / projector.window)
        total.add(3 * projector.forward(projector_windows))
    for p in passes:
        c = llm_pass_flops(llm, p)
        total.add(c.model, c.executed)
    return total


# Dense bf16/fp16 tensor-core peaks (TFLOP/s) for the MFU estimate; keys are matched against
# `torch.cuda.get_device_name()`, most specific first. Other devices: pass the peak explicitly.
DEVICE_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
}


def device_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (None for anything else, including CPUs)."""
    for key, peak in DEVICE_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None
