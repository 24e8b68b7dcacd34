"""Stage-1 training throughput: a configuration faithful to the original implementation vs ours.

    python benchmarks/bench_stage1.py [--variants contr-emb,contr-all,asr] [--steps 8] [--batch 10]
                                      [--time-scale 0.3] [--threads 2] [--json results.json]

The same utterances (one epoch of `steps x batch`, MuST-C-like durations) and the same random model
(a HuBERT-architecture encoder, a window Q-Former, a Llama-architecture LLM with a 128k vocabulary)
go through
  (a) original: random batches; activation checkpointing of the LLM; NWP through the causal LM with
      `labels=` (logits over the full vocabulary at every position); contrastive passes through the
      whole decoder with all hidden states, and a text pass whose input embeddings require grad (as
      checkpointing with `enable_input_require_grads` makes them), so it back-propagates; no caches;
  (b) ours: duration-bucketed batches (`DurationBatchSampler`), no checkpointing, and the training
      objectives as the package implements them now (`build_objective`: no-grad text pass, whatever
      labelled-only logits / stop-at-deepest-layer the model provides), with a warm frozen-feature
      cache and, for the contrastive variants, a warm text-state cache (both filled first, untimed,
      as `python -m llava.model.feature_cache` or a first epoch would).
To stay conservative, (a) runs no LM head in the contrastive passes and no LLM pass for layer 0.

Each (variant, configuration) runs in a fresh process. Printed per run: utterances/s, audio-seconds/s,
audio and token padding, peak memory above the pre-training baseline (resident set on a CPU, allocator
peak on a GPU), the loss of a fixed probe batch at initialisation (the two configurations must agree:
same math) and after the epoch, and (b)/(a) ratios.

Sizes: durations are the paper's (log-normal, mean 6 s, max 45 s) times `--time-scale`; token counts
per second of audio are kept (11.8 projector positions/s, 3.3 transcript tokens/s), and the prompt
(system turn + instruction, 45 tokens in the paper) is scaled with the durations so the shares of a
step stay close to the paper's. The encoder and LLM widths are chosen so their FLOP ratio is
paper-like (see benchmarks/flop_model.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "contr-emb": {"contrastive_training": True, "contrastive_layer": "0"},
    "contr-all": {"contrastive_training": True, "contrastive_layer": "all"},
    "asr": {},
}
SR = 16000
TOKENS_PER_SECOND = 3.3  # transcript tokens per second of speech (Llama-3 tokenizer, read speech)
PAPER_PROMPT_TOKENS = 45


def model_configs(args) -> tuple[dict, dict, dict]:
    # FLOP ratios as at the paper's shapes (benchmarks/flop_model.py): encoder / Q-Former (forward +
    # backward) ~9 (paper 8.5), encoder / LLM forward per second of audio ~0.23 (paper 0.23).
    encoder = dict(
        model_type="hubert", hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=384, conv_dim=[32] * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        layerdrop=0.0, vocab_size=32,
    )  # fmt: skip
    llm = dict(
        model_type="llama", vocab_size=args.vocab, hidden_size=args.hidden,
        intermediate_size=3 * args.hidden, num_hidden_layers=args.llm_layers, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    projector = dict(
        num_queries=4, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=128, dropout=0.0
    )
    return encoder, llm, projector


# ------------------------------------------------------------------------------------------ data
def make_pool(n: int, scale: float, vocab: int, seed: int = 0) -> list[dict]:
    """n utterances: waveform, transcript ids; paper-like durations (log-normal, mean 6 s, 1-45 s)."""
    rng = np.random.default_rng(seed)
    sigma = 0.65  # gives ~58 % padding in random batches of 10, as measured on MuST-C
    durations = np.clip(rng.lognormal(math.log(6.0) - sigma**2 / 2, sigma, n), 1.0, 45.0) * scale
    pool = []
    for i, d in enumerate(durations):
        samples = int(d * SR)
        wave = (rng.standard_normal(samples) * 0.1).astype(np.float32)
        k = max(2, round(TOKENS_PER_SECOND * d))
        pool.append({"id": i, "audio": wave, "transcript": rng.integers(1000, vocab - 10, k).tolist()})
    return pool


def collate(items: list[dict], model, prompt: list[int], pad_id: int, eot_id: int) -> dict:
    """The collator's Batch for ASR: prompt + audio run + transcript + end of turn; right padded."""
    audio_id = model.config.audio_token_id
    rows, labels = [], []
    for it in items:
        n = model.num_audio_tokens(len(it["audio"]))
        target = it["transcript"] + [eot_id]
        rows.append(prompt + [audio_id] * n + target)
        labels.append([-100] * (len(prompt) + n) + target)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    lengths = [len(it["audio"]) for it in items]
    audio = torch.zeros(len(items), max(lengths))
    for i, it in enumerate(items):
        audio[i, : lengths[i]] = torch.from_numpy(it["audio"])
    t_width = max(len(it["transcript"]) for it in items)
    text = torch.full((len(items), t_width), pad_id)
    text_mask = torch.zeros(len(items), t_width, dtype=torch.long)
    for i, it in enumerate(items):
        text[i, : len(it["transcript"])] = torch.tensor(it["transcript"])
        text_mask[i, : len(it["transcript"])] = 1
    return {
        "input_ids": ids, "attention_mask": mask, "labels": lab, "audio_values": audio,
        "audio_lengths": torch.tensor(lengths), "text_input_ids": text, "text_attention_mask": text_mask,
    }  # fmt: skip


def batches_for(config: str, pool: list[dict], batch: int, seed: int) -> list[list[int]]:
    if config == "a":  # the original: uniformly random batches
        order = np.random.default_rng(seed).permutation(len(pool))
        return [order[i : i + batch].tolist() for i in range(0, len(pool), batch)]
    from llava.dataset.sampler import DurationBatchSampler

    durations = [len(it["audio"]) / SR for it in pool]
    return [list(b) for b in DurationBatchSampler(durations, batch_size=batch, seed=seed, shuffle=True)]


# ------------------------------------------------------------------------------------------ losses
def original_loss_fn(model, flags: dict):
    """The original implementation's step, written out (see the module docstring)."""
    import torch.nn.functional as F

    try:
        from llava.model.layers import resolve_layers
    except ImportError:  # before the layer helpers moved to the model package
        from llava.losses.contrastive import resolve_layers

    contrastive = flags.get("contrastive_training", False)
    layers = resolve_layers(flags.get("contrastive_layer", "0"), model.num_llm_layers) if contrastive else []
    lm = model.language_model

    def pooled(h, mask):  # [B, L, D], [B, L] -> [B, D], L2-normalised mean over valid positions
        m = mask.to(h.dtype)[..., None]
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def fn(batch):
        embeds, valid = model.embed_audio(batch["audio_values"], batch["audio_lengths"])  # [B, Q, D]
        if not contrastive:
            spliced = model.splice(batch["input_ids"], embeds, valid)
            return lm(
                inputs_embeds=spliced, attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        text_mask, speech_mask = batch["text_attention_mask"], valid.long()
        text = lm.get_input_embeddings()(batch["text_input_ids"]).requires_grad_(True)
        if max(layers) > 0:
            decoder = lm.get_decoder()
            t_h = decoder(
                inputs_embeds=text, attention_mask=text_mask, output_hidden_states=True
            ).hidden_states
            s_h = decoder(
                inputs_embeds=embeds, attention_mask=speech_mask, output_hidden_states=True
            ).hidden_states
        else:
            t_h, s_h = (text,), (embeds,)
        loss = 0.0
        target = torch.arange(text.shape[0])
        for k in layers:
            sim = pooled(t_h[k], text_mask) @ pooled(s_h[k], speech_mask).T / 0.1  # rows = text
            loss = loss + F.cross_entropy(sim, target)
        return loss

    return fn


def ours_loss_fn(model, flags: dict):
    from llava.train.arguments import DataArguments, LossArguments
    from llava.train.objectives import build_objective

    objective = build_objective(LossArguments(**flags), DataArguments(), model.num_llm_layers)

    def fn(batch):
        terms = objective(model, batch)
        return sum(objective.weights[k] * v for k, v in terms.items())

    return fn, objective


# ------------------------------------------------------------------------------------------ one run
class PeakRSS:
    """Samples this process's resident set every 2 ms (a CPU has no allocator peak counter)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def __enter__(self):
        self.baseline = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_one(variant: str, config: str, args) -> dict:
    from llava.demo.base_models.tokenizer import train_bpe_tokenizer
    from llava.model import apply_training_mode, build_model
    from llava.model.feature_cache import attach_feature_cache
    from llava.model.text_cache import attach_text_cache

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = train_bpe_tokenizer(["speech to text benchmark words"] * 8, vocab_size=300)
    enc_cfg, llm_cfg, proj_cfg = model_configs(args)
    model, tok = build_model(enc_cfg, llm_cfg, tokenizer=tok, projector_config=proj_cfg)
    apply_training_mode(model)
    model.to(device).train()
    flags = VARIANTS[variant]
    pool = make_pool(args.steps * args.batch, args.time_scale, args.vocab)
    probe_pool = make_pool(args.batch, args.time_scale, args.vocab, seed=1)
    prompt = list(range(500, 500 + max(8, round(PAPER_PROMPT_TOKENS * args.time_scale))))
    pad_id, eot_id = tok.pad_token_id, 400

    def to_dev(b):
        return {k: v.to(device) for k, v in b.items()}

    probe = to_dev(collate(probe_pool, model, prompt, pad_id, eot_id))
    batches = [
        to_dev(collate([pool[i] for i in b], model, prompt, pad_id, eot_id))
        for b in batches_for(config, pool, args.batch, args.seed)
    ]
    fill_seconds = None
    if config == "a":
        ckpt = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        ckpt()
        loss_fn = original_loss_fn(model, flags)
    else:
        loss_fn, objective = ours_loss_fn(model, flags)
        if not args.no_cache:
            # Caches filled untimed, as the fill command (or the first epoch) does ahead of the epochs
            # measured here.
            t0 = time.perf_counter()
            attach_feature_cache(
                model.audio_tower, Path(args.cache_dir) / "audio", storage_dtype=args.cache_dtype
            )
            text_cache = attach_text_cache(model, Path(args.cache_dir) / "text", objective)
            with torch.no_grad():
                for it in pool + probe_pool:
                    wave = torch.from_numpy(it["audio"])[None].to(device)
                    model.audio_tower(wave, torch.tensor([wave.shape[1]], device=device))
                for b in [probe, *batches] if text_cache is not None else []:
                    text_cache.pooled_states(model, b["text_input_ids"], b["text_attention_mask"])
            fill_seconds = time.perf_counter() - t0
    with torch.no_grad():
        probe_init = float(loss_fn(probe))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    valid = sum(int(b["audio_lengths"].sum()) for b in batches)
    padded = sum(b["audio_values"].numel() for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    token_slots = sum(b["attention_mask"].numel() for b in batches)
    losses = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    # Warm-up (one-off allocations, kernel selection) on the probe batch; no optimiser step, so both
    # configurations start the timed epoch from the same weights.
    loss_fn(probe).backward()
    opt.zero_grad(set_to_none=True)
    with PeakRSS() as rss:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for batch in batches:
            loss = loss_fn(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    timed = batches
    timed_utts = sum(b["input_ids"].shape[0] for b in timed)
    timed_audio = sum(int(b["audio_lengths"].sum()) for b in timed) / SR
    peak = (torch.cuda.max_memory_allocated() - base_mem) if device == "cuda" else rss.peak - rss.baseline
    with torch.no_grad():
        probe_final = float(loss_fn(probe))
    return {
        "variant": variant, "config": config, "device": device, "steps_timed": len(timed),
        "seconds": elapsed, "utterances_per_s": timed_utts / elapsed, "audio_s_per_s": timed_audio / elapsed,
        "audio_padding": 1 - valid / padded, "token_padding": 1 - tokens / token_slots,
        "peak_mem_mib": peak / 2**20, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "probe_loss_init": probe_init, "probe_loss_final": probe_final, "train_loss_last": losses[-1],
        "cache_fill_s": fill_seconds,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ driver
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--configs", default="a,b", help="a = original, b = ours")
    ap.add_argument("--steps", type=int, default=8, help="batches per run (one epoch of steps x batch)")
    ap.add_argument("--batch", type=int, default=10, help="utterances per batch (paper: 10)")
    ap.add_argument("--time-scale", type=float, default=0.3, help="durations x this (1 = paper's)")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--cache-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-cache", action="store_true", help="(b) without the feature and text caches")
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--_run", nargs=2, metavar=("VARIANT", "CONFIG"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _ratio(b: float, a: float) -> str:
    return f"{b / a:6.2f}x" if a else "   n/a"


def print_table(results: list[dict], args) -> None:
    dev = results[0]["device"] if results else "?"
    print(
        f"\nstage-1 benchmark on {dev} ({torch.get_num_threads()} threads): batch {args.batch}, "
        f"{args.steps} timed steps per run (one epoch of {args.steps * args.batch} utterances, after a "
        f"warm-up step), durations x{args.time_scale}, LLM {args.llm_layers} layers x {args.hidden} / vocab "
        f"{args.vocab}, (b) caches {'off' if args.no_cache else 'warm, features in ' + args.cache_dtype}"
    )
    head = f"{'variant':10s} {'run':9s} {'utt/s':>8s} {'audio s/s':>9s} {'audio pad':>9s} {'tok pad':>8s} {'peak MiB':>9s} {'probe@0':>9s} {'probe@N':>9s}"
    print(head)
    print("-" * len(head))
    by = {(r["variant"], r["config"]): r for r in results}
    for v in args.variants.split(","):
        for c, label in (("a", "original"), ("b", "ours")):
            r = by.get((v, c))
            if r:
                print(
                    f"{v:10s} {label:9s} {r['utterances_per_s']:8.2f} {r['audio_s_per_s']:9.2f} "
                    f"{100 * r['audio_padding']:8.1f}% {100 * r['token_padding']:7.1f}% {r['peak_mem_mib']:9.0f} "
                    f"{r['probe_loss_init']:9.4f} {r['probe_loss_final']:9.4f}"
                )
        a, b = by.get((v, "a")), by.get((v, "b"))
        if a and b:
            rel = abs(b["probe_loss_init"] - a["probe_loss_init"]) / abs(a["probe_loss_init"])
            print(
                f"{v:10s} {'ours/orig':9s} {_ratio(b['utterances_per_s'], a['utterances_per_s']):>8s} "
                f"{_ratio(b['audio_s_per_s'], a['audio_s_per_s']):>9s} {'':>9s} {'':>8s} "
                f"{_ratio(b['peak_mem_mib'], a['peak_mem_mib']):>9s} {'rel ' + format(rel, '.1e'):>9s} "
                f"{_ratio(b['probe_loss_final'], a['probe_loss_final']):>9s}"
            )
    fills = [r["cache_fill_s"] for r in results if r.get("cache_fill_s")]
    if fills:
        print(f"(caches filled before the (b) runs, untimed: {fills[0]:.1f} s for the first variant)")


def _child_args(args) -> list[str]:
    out = []
    for name in (
        "steps",
        "batch",
        "time_scale",
        "vocab",
        "hidden",
        "llm_layers",
        "lr",
        "seed",
        "threads",
        "cache_dtype",
    ):
        out += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return out + (["--no-cache"] if args.no_cache else [])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._run:
        print("RESULT " + json.dumps(run_one(args._run[0], args._run[1], args)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_dir:
        for v in args.variants.split(","):
            if v not in VARIANTS:
                raise SystemExit(f"--variants: unknown {v!r}; known {list(VARIANTS)}")
            for c in args.configs.split(","):
                cmd = [sys.executable, __file__, "--_run", v, c, "--cache-dir", cache_dir, *_child_args(args)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.stderr.write(out.stdout + out.stderr)
                    raise SystemExit(f"run {v}/{c} failed")
                results.append(json.loads(line[len("RESULT ") :]))
                r = results[-1]
                print(
                    f"  {v}/{c}: {r['utterances_per_s']:.2f} utt/s, peak {r['peak_mem_mib']:.0f} MiB",
                    flush=True,
                )
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
