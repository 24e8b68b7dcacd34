"""Generation throughput (utterances/s) at batch size 1 vs a larger batch, as evaluation runs it:
`SpeechCollator(inference=True)` (left padding) + `llava.inference.generation.generate_batch`, greedy.

    python benchmarks/bench_generation.py                        # random tiny model, CPU
    python benchmarks/bench_generation.py --model-path CKPT --device cuda --dtype bfloat16
    python benchmarks/bench_generation.py --batch-sizes 1 4 16 --utterances 64 --max-new-tokens 48

Utterances are random noise of 1-4 s (sorted by length before batching, as the evaluation does), with
the ASR prompt. A random model rarely emits the end-of-turn token, so nearly every utterance runs to
`--max-new-tokens`: the figure is decoding throughput at a fixed output length.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from llava.dataset.collator import SpeechCollator
from llava.inference.generation import GenerationSettings, generate_batch
from llava.inference.loading import resolve_dtype

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small cat sleeps on the warm mat in the sun",
    "transcribe the audio into text",
    "translate the audio into german",
    "one two three four five six seven eight nine ten",
]


def tiny_random_model(device: str):
    """HuBERT-shaped encoder (hidden 64) -> Q-Former -> Llama (hidden 128, 4 layers), random weights."""
    from llava.demo.base_models.tokenizer import train_bpe_tokenizer
    from llava.model import apply_training_mode, build_model

    torch.manual_seed(0)
    tok = train_bpe_tokenizer(_CORPUS * 8, vocab_size=500)
    encoder = dict(
        model_type="hubert",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
        vocab_size=32,
    )
    llm = dict(
        model_type="llama",
        vocab_size=len(tok) + 8,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    qformer = dict(
        num_queries=4, num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128, dropout=0.0
    )
    model, tok = build_model(encoder, llm, tokenizer=tok, projector_config=qformer)
    apply_training_mode(model)
    return model.to(device).eval(), tok


def utterances(n: int, sampling_rate: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(1.0, 4.0, size=n))[::-1]  # longest first, as in evaluation
    return [
        {
            "id": f"utt{i}",
            "task": "ASR",
            "audio": (0.1 * rng.standard_normal(int(s * sampling_rate))).astype(np.float32),
            "prompt": "Transcribe the audio.\n<audio>",
            "target": "",
        }
        for i, s in enumerate(seconds)
    ]


def throughput(model, tok, samples, batch_size: int, settings: GenerationSettings) -> float:
    collator = SpeechCollator(tok, model.num_audio_tokens, inference=True)
    generate_batch(model, tok, collator(samples[:batch_size]), settings)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        generate_batch(model, tok, collator(samples[i : i + batch_size]), settings)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(samples) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="a checkpoint; default: a random tiny model")
    p.add_argument("--audio-encoder", default=None)
    p.add_argument("--llm", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--utterances", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model_path:
        from llava.model.builder import load_pretrained_model

        model, tok = load_pretrained_model(
            args.model_path,
            audio_encoder=args.audio_encoder,
            llm=args.llm,
            device=args.device,
            dtype=resolve_dtype(args.dtype, args.device),
        )
    else:
        model, tok = tiny_random_model(args.device)
    samples = utterances(args.utterances, model.audio_tower.sampling_rate)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)

    results = {}
    for bs in args.batch_sizes:
        results[bs] = throughput(model, tok, samples, bs, settings)
        print(f"batch {bs:>3}: {results[bs]:8.2f} utterances/s", flush=True)
    base = args.batch_sizes[0]
    for bs in args.batch_sizes[1:]:
        print(f"batch {bs} / batch {base}: {results[bs] / results[base]:.2f}x")
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"({args.utterances} utterances of 1-4 s, max {args.max_new_tokens} new tokens, greedy, {device})")


if __name__ == "__main__":
    main()
