"""FLOPs of one stage-1 micro-batch at the paper's shapes: the original implementation vs ours.

    python benchmarks/flop_model.py [--utterances 20000] [--batch 10] [--seed 0]

Shapes: HuBERT-large (24 x 1024, conv feature extractor), the window Q-Former (4 x 768, 4 queries per
17-frame window, 42.5 M parameters), Llama-3.1-8B (32 x 4096, GQA 32/8, FFN 14336, 128k vocabulary).
Data: MuST-C-like durations (log-normal, mean 6 s, clipped to 1-45 s), batches of 10; transcripts of
3.3 tokens per second; the chat prompt (system turn, template, instruction) 45 tokens; 11.8 projector
positions per second of audio. FLOPs per micro-batch are averaged over a simulated epoch of
`--utterances` utterances, batched at random (the original) or by duration buckets (ours,
`DurationBatchSampler`), using the FLOP model of `llava.model.flops` (executed FLOPs: recomputation
under activation checkpointing included).

Each table adds one change at a time, from the original configuration to ours:
    original            random batches, activation checkpointing, NWP logits over the full vocabulary
                        at every position, a text pass that back-propagates (and is checkpointed);
                        conservative: no LM head in contrastive passes, no LLM pass for layer 0
    + buckets           duration-bucketed batches
    + no-grad text      the text pass without gradient
    + no checkpointing  (fits in 80 GB for every variant; the config stream's memory figures)
    + labelled logits   the LM head on labelled positions only
    + deepest layer     the LLM stops at the deepest contrastive layer (matters for a single k < 32)
    + feature cache     frozen-encoder features read from disk
    + text cache        pooled text states read from disk (`--text_state_cache`)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import numpy as np

from llava.model.flops import EncoderShape, FlopCount, LLMPass, LLMShape, QFormerShape, step_flops

SR = 16000
HUBERT_LARGE = EncoderShape(
    layers=24, hidden=1024, ffn=4096, conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2), pos_kernel=128, pos_groups=16,
)  # fmt: skip
QFORMER = QFormerShape(layers=4, hidden=768, ffn=3072, queries=4, window=17, encoder_dim=1024, llm_dim=4096)
LLAMA_8B = LLMShape(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256)
PROMPT_TOKENS = 45
TOKENS_PER_SECOND = 3.3
ALL_LAYERS = [0, 5, 10, 15, 20, 25, 32]
VARIANTS = {  # name: (contrastive layers, NWP term)
    "contr-emb": ([0], False),
    "contr-16": ([16], False),
    "contr-all": (ALL_LAYERS, False),
    "asr": ([], True),
    "contr-all+asr": (ALL_LAYERS, True),
}


@dataclass(frozen=True)
class Setup:
    buckets: bool = False
    text_grad: bool = True
    checkpointing: bool = True
    labelled_logits: bool = False
    stop_at_deepest: bool = False
    feature_cache: bool = False
    text_cache: bool = False


STEPS = [
    ("original", Setup()),
    ("+ buckets", Setup(buckets=True)),
    ("+ no-grad text", Setup(buckets=True, text_grad=False)),
    ("+ no checkpointing", Setup(buckets=True, text_grad=False, checkpointing=False)),
    ("+ labelled logits", Setup(buckets=True, text_grad=False, checkpointing=False, labelled_logits=True)),
]
STEPS.append(("+ deepest layer", replace(STEPS[-1][1], stop_at_deepest=True)))
STEPS.append(("+ feature cache", replace(STEPS[-1][1], feature_cache=True)))
STEPS.append(("+ text cache", replace(STEPS[-1][1], text_cache=True)))


def durations(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = 0.65
    return np.clip(rng.lognormal(math.log(6.0) - sigma**2 / 2, sigma, n), 1.0, 45.0)


def batches(d: np.ndarray, batch: int, buckets: bool, seed: int) -> list[np.ndarray]:
    if not buckets:
        order = np.random.default_rng(seed).permutation(len(d))
        return [d[order[i : i + batch]] for i in range(0, len(d), batch)]
    from llava.dataset.sampler import DurationBatchSampler

    return [d[list(b)] for b in DurationBatchSampler(d, batch_size=batch, seed=seed, shuffle=True)]


def micro_batch(dur: np.ndarray, layers: list[int], nwp: bool, s: Setup) -> FlopCount:
    """FLOPs of one micro-batch of utterances with durations `dur` (seconds)."""
    rows = len(dur)
    samples = [int(x * SR) for x in dur]
    frames = [HUBERT_LARGE.frames(n) for n in samples]
    windows = [math.ceil(f / QFORMER.window) for f in frames]
    speech_len = max(windows) * QFORMER.queries  # padded speech positions
    text = [max(2, round(TOKENS_PER_SECOND * x)) for x in dur]
    chat = [PROMPT_TOKENS + w * QFORMER.queries + t + 1 for w, t in zip(windows, text)]
    n = LLAMA_8B.layers
    passes = []
    if nwp:
        head = sum(t + 1 for t in text) if s.labelled_logits else rows * max(chat)
        passes.append(LLMPass(rows, max(chat), n, True, s.checkpointing, head_positions=head))
    deepest = max(layers) if layers else 0
    if deepest > 0:
        depth = deepest if s.stop_at_deepest else n
        passes.append(LLMPass(rows, speech_len, depth, True, s.checkpointing))
        if not s.text_cache:
            passes.append(LLMPass(rows, max(text), depth, s.text_grad, s.checkpointing and s.text_grad))
    encoder = None if s.feature_cache else HUBERT_LARGE
    return step_flops(encoder, QFORMER, LLAMA_8B, rows, max(samples), passes, sum(windows))


def padding(bs: list[np.ndarray]) -> float:
    return 1 - sum(b.sum() for b in bs) / sum(len(b) * b.max() for b in bs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    d = durations(args.utterances, args.seed)
    grouped = {b: batches(d, args.batch, b, args.seed) for b in (False, True)}
    print(
        f"{args.utterances} utterances, mean {d.mean():.2f} s, batches of {args.batch}: padding "
        f"{100 * padding(grouped[False]):.1f}% random, {100 * padding(grouped[True]):.1f}% bucketed; "
        f"mean padded length {np.mean([b.max() for b in grouped[False]]):.1f} s vs "
        f"{np.mean([b.max() for b in grouped[True]]):.1f} s"
    )
    print("TFLOP per micro-batch (executed, recomputation included), mean over the epoch\n")
    names = list(VARIANTS)
    head = f"{'configuration':22s}" + "".join(f"{n:>15s}" for n in names)
    print(head)
    print("-" * len(head))
    table: dict[str, list[float]] = {}
    for label, setup in STEPS:
        row = []
        for name in names:
            layers, nwp = VARIANTS[name]
            flops = [micro_batch(b, layers, nwp, setup).executed for b in grouped[setup.buckets]]
            row.append(float(np.mean(flops)) / 1e12)
        table[label] = row
        print(f"{label:22s}" + "".join(f"{x:15.2f}" for x in row))
    first, ours = table[STEPS[0][0]], table[STEPS[-1][0]]
    print("-" * len(head))
    print(f"{'original / ours':22s}" + "".join(f"{a / b:14.1f}x" for a, b in zip(first, ours)))
    print("(ours = every change above; the caches count as warm, i.e. from the second epoch on)")
    worst = np.full(args.batch, 45.0)
    print(f"\nworst batch ({args.batch} x 45 s), TFLOP: original / ours")
    for name in names:
        layers, nwp = VARIANTS[name]
        a = micro_batch(worst, layers, nwp, STEPS[0][1]).executed / 1e12
        b = micro_batch(worst, layers, nwp, STEPS[-1][1]).executed / 1e12
        print(f"  {name:15s} {a:8.1f} / {b:8.1f}")


if __name__ == "__main__":
    main()
