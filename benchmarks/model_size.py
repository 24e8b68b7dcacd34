"""The paper's architecture at full size with random weights: parameter counts, and on a GPU the
memory and time of one bf16 forward/backward.

    python benchmarks/model_size.py                 # counts only (meta device, no memory needed)
    python benchmarks/model_size.py --gpu --batch 10 --seconds 15

Encoder: HuBERT-large (hubert-large-ls960-ft config); projector: window Q-Former (4 queries, 4 layers,
hidden 768); LLM: Llama-3.1-8B-shaped. No weights are downloaded: the configs are written out here.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import HubertConfig, LlamaConfig

from llava.model import SpeechLlavaConfig, SpeechLlavaForCausalLM, apply_training_mode
from llava.model.builder import count_parameters

HUBERT_LARGE = HubertConfig(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    conv_bias=True,
    layerdrop=0.0,
    vocab_size=32,
)
LLAMA_31_8B = LlamaConfig(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
AUDIO_TOKEN_ID = 128256  # one past the vocabulary: placeholders are never embedded


def build(device: str | torch.device, dtype: torch.dtype | None = None) -> SpeechLlavaForCausalLM:
    config = SpeechLlavaConfig(
        audio_config=HUBERT_LARGE,
        text_config=LLAMA_31_8B,
        projector_type="qformer",
        audio_token_id=AUDIO_TOKEN_ID,
    )
    with torch.device(device):
        model = SpeechLlavaForCausalLM(config, attn_implementation="sdpa")
    if dtype is not None:
        model.audio_tower.to(dtype)
        model.language_model.to(dtype)
    return apply_training_mode(model)


def fmt(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="also time one bf16 forward/backward on CUDA")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--prompt-tokens", type=int, default=40, help="text tokens around the audio")
    args = ap.parse_args()

    model = build("meta")
    counts = {
        "audio_tower": count_parameters(model.audio_tower),
        "projector": count_parameters(model.projector),
        "language_model": count_parameters(model.language_model),
        "total": count_parameters(model),
    }
    print(f"{'component':16s} {'trainable':>12s} {'frozen':>12s}")
    for name, c in counts.items():
        print(f"{name:16s} {fmt(c['trainable']):>12s} {fmt(c['frozen']):>12s}")
    n_samples = int(args.seconds * 16000)
    n_tokens = model.num_audio_tokens(n_samples)
    print(f"{args.seconds:.1f} s of audio -> {n_tokens} LLM positions ({n_tokens / args.seconds:.1f}/s)")

    if not args.gpu:
        return
    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    del model
    torch.manual_seed(0)
    model = build("cuda", torch.bfloat16).train()
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    b = args.batch
    ids = torch.randint(0, 128000, (b, args.prompt_tokens + n_tokens), device="cuda")
    ids[:, args.prompt_tokens // 2 : args.prompt_tokens // 2 + n_tokens] = AUDIO_TOKEN_ID
    batch = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=ids.masked_fill(ids == AUDIO_TOKEN_ID, -100),
        audio_values=torch.randn(b, n_samples, device="cuda") * 0.1,
        audio_lengths=torch.full((b,), n_samples, device="cuda"),
    )
    for step in range(3):  # first step warms up kernels and the allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"step {step}: fwd+bwd {dt * 1000:.0f} ms, peak memory {peak:.1f} GiB, loss {loss.item():.3f}")
        model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
