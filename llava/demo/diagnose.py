"""Diagnostics of stage 1: layer-wise alignment of a checkpoint, and the gradient balance of the
layer-wise contrastive loss.

    python -m llava.demo.diagnose gradients --base DIR --corpus DIR --out DIR [--steps 40]
    python -m llava.demo.diagnose real-scale [--out DIR]

`gradients` trains a fresh projector for a few steps under several settings of the contrastive loss
over all layers (the paper's, per-layer weights, an output scale matched to the LLM's embeddings)
and records, per layer and step: the InfoNCE loss, the norm of that term's gradient at the
projector's parameters, and the mean pairwise cosine of the pooled speech (and text) vectors — a
value near 1 means every utterance maps to the same direction and retrieval is impossible. After
the steps it measures speech->text R@1 per layer on dev utterances. `real-scale` computes the same
scale mismatch for the paper's models (Llama-3.1-8B's embedding shape, the paper's Q-Former).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llava.dataset.collator import SpeechCollator
from llava.dataset.dataset import SpeechDataset
from llava.eval.alignment import alignment_eval, write_alignment
from llava.losses.contrastive import layerwise_contrastive_loss, masked_mean_pool
from llava.model import load_pretrained_model
from llava.model.layers import resolve_layers


def alignment_of_checkpoint(
    ckpt: Path,
    data_config: Path,
    out: Path,
    limit: int,
    feature_cache: Path | None = None,
    on_sample: Callable[[int], object] | None = None,
) -> dict:
    """Alignment metrics per LLM layer; writes `test_alignment.json` / `.png` into `out`.
    `on_sample(1)` is called as each utterance is read (a progress bar's update)."""
    model, tokenizer = load_pretrained_model(ckpt)
    _attach_cache(model, feature_cache)
    dataset = SpeechDataset.from_config(data_config, "test", train=False)

    def read(i: int):
        if on_sample is not None:
            on_sample(1)
        return dataset[i]

    samples = (read(i) for i in range(len(dataset)))
    results = alignment_eval(model, tokenizer, itertools.islice(samples, limit), layers="all", batch_size=16)
    write_alignment(results, out / "test")
    return {"layers": {str(k): v for k, v in results.items()}}


def _attach_cache(model, feature_cache: Path | None) -> None:
    if feature_cache is not None:
        from llava.model.feature_cache import attach_feature_cache

        attach_feature_cache(model.audio_tower, feature_cache)


# ------------------------------------------------------------------------------------ gradient balance
@dataclass
class ProbeSetting:
    """One setting of the contrastive loss over all layers, as the training flags would give it."""

    name: str
    output_norm: str = "none"  # --projector_output_norm
    layer_weights: dict[int, float] | None = None  # --contrastive_layer_weights (missing layers weigh 1)

    def flags(self) -> list[str]:
        out = ["--projector_output_norm", self.output_norm] if self.output_norm != "none" else []
        if self.layer_weights:
            spec = ",".join(f"{k}:{v:g}" for k, v in sorted(self.layer_weights.items()))
            out += ["--contrastive_layer_weights", spec]
        return out


def deep_layer_weights(layers: list[int], weight: float) -> dict[int, float]:
    """Weight 1 on the embeddings (layer 0), `weight` on every deeper layer."""
    return {k: (1.0 if k == 0 else weight) for k in layers}


def pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine over all pairs i != j of the rows of x [B, D] (1 = all rows parallel)."""
    if x.shape[0] < 2:
        raise ValueError("pairwise_cosine needs at least 2 rows")
    z = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = z @ z.T  # [B, B]
    b = x.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (b * (b - 1)))


def contrastive_pass(model, batch: Mapping[str, torch.Tensor], layers: list[int]):
    """Projector outputs and pooled text/speech vectors per layer for one batch.

    Returns (audio_embeds [B, Q, D], audio_mask [B, Q], text_h, text_mask, speech_h, speech_mask);
    the text side runs without gradient (a fixed target, as in training)."""
    embeds, audio_mask = model.embed_audio(batch["audio_values"], batch["audio_lengths"])  # [B, Q, D]
    speech_mask = audio_mask.long()
    states = model.hidden_states  # layer -> [B, L, D]; 0 = the input embeddings
    text_ids, text_mask = batch["text_input_ids"], batch["text_attention_mask"]
    with torch.no_grad():
        text_embeds = model.language_model.get_input_embeddings()(text_ids)  # [B, Lt, D]
        text_h = states(text_embeds, text_mask, layers)
    speech_h = states(embeds, speech_mask, layers)
    return embeds, audio_mask, text_h, text_mask, speech_h, speech_mask


def gradient_report(model, batch, layers: list[int], weights: dict[int, float] | None) -> dict:
    """Per layer: InfoNCE loss, norm of the gradient of its weighted term at the projector's
    parameters, its share of the summed per-term norms, and pairwise cosines; plus output norms."""
    params = [p for p in model.projector.parameters() if p.requires_grad]
    embeds, audio_mask, text_h, text_mask, speech_h, speech_mask = contrastive_pass(model, batch, layers)
    weights = weights or {}
    per_layer: dict[int, dict[str, float]] = {}
    for k in layers:
        loss, _ = layerwise_contrastive_loss({k: text_h[k]}, text_mask, {k: speech_h[k]}, speech_mask)
        grads = torch.autograd.grad(weights.get(k, 1.0) * loss, params, retain_graph=True, allow_unused=True)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
        per_layer[k] = {
            "loss": float(loss.detach()),
            "grad_norm": norm,
            "speech_pairwise_cos": pairwise_cosine(masked_mean_pool(speech_h[k].detach(), speech_mask)),
            "text_pairwise_cos": pairwise_cosine(masked_mean_pool(text_h[k], text_mask)),
        }
    total = sum(v["grad_norm"] for v in per_layer.values()) or 1.0
    for v in per_layer.values():
        v["grad_share"] = v["grad_norm"] / total
    table = model.language_model.get_input_embeddings().weight
    return {
        "layers": per_layer,
        "projector_output_norm": float(embeds[audio_mask].detach().norm(dim=-1).mean()),
        "token_embedding_norm": float(table.detach().float().norm(dim=-1).mean()),
    }


def _batches(dataset, collator, batch_size: int, seed: int) -> Iterator[dict]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            samples = [dataset[j] for j in order[i : i + batch_size]]
            batch = collator([s for s in samples if s is not None])
            if batch["audio_values"].shape[0] >= 2:
                yield batch


@torch.no_grad()
def dev_layer_losses(model, batches: list[dict], layers: list[int]) -> dict[int, float]:
    """Per-layer InfoNCE averaged over fixed dev batches (a steadier measure than one training batch)."""
    sums = dict.fromkeys(layers, 0.0)
    for batch in batches:
        _, _, text_h, text_mask, speech_h, speech_mask = contrastive_pass(model, batch, layers)
        _, per_layer = layerwise_contrastive_loss(text_h, text_mask, speech_h, speech_mask)
        for k, v in per_layer.items():
            sums[k] += float(v)
    return {k: v / len(batches) for k, v in sums.items()}


@dataclass
class ProbeOptions:
    steps: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-3
    record_every: int = 10
    dev_batches: int = 12  # dev batches (of batch_size) for the per-layer dev InfoNCE
    seed: int = 0
    align_limit: int = 96  # dev utterances for the R@1 after the steps
    projector: dict = field(default_factory=dict)  # projector settings (without output_norm)
    projector_type: str = "qformer"


def probe(base: Path, corpus: Path, setting: ProbeSetting, opts: ProbeOptions, cache: Path | None) -> dict:
    """Train a fresh projector with the contrastive loss over all layers under `setting`; record the
    gradient report at steps 0, record_every, ... and the R@1 per layer after `opts.steps` steps."""
    from llava.model import apply_training_mode, build_model

    torch.manual_seed(opts.seed)
    model, tokenizer = build_model(
        str(base / "encoder"),
        str(base / "llm"),
        projector_type=opts.projector_type,
        projector_config={**opts.projector, "output_norm": setting.output_norm},
    )
    apply_training_mode(model)
    _attach_cache(model, cache)
    layers = resolve_layers("all", model.num_llm_layers)
    config = corpus / "configs" / "pretrain_asr.yml"
    train = SpeechDataset.from_config(config, "train", seed=opts.seed)
    collator = SpeechCollator(tokenizer, model.num_audio_tokens, with_transcript=True)
    params = [p for p in model.projector.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=0.0)
    dev = SpeechDataset.from_config(config, "eval", train=False)
    dev_batches = list(itertools.islice(_batches(dev, collator, opts.batch_size, 1234), opts.dev_batches))
    model.eval()
    dev_before = dev_layer_losses(model, dev_batches, layers)
    history, t0 = [], time.perf_counter()
    model.train()
    for step, batch in enumerate(_batches(train, collator, opts.batch_size, opts.seed)):
        if step % opts.record_every == 0 or step == opts.steps:
            history.append({"step": step, **gradient_report(model, batch, layers, setting.layer_weights)})
        if step == opts.steps:
            break
        _, _, text_h, text_mask, speech_h, speech_mask = contrastive_pass(model, batch, layers)
        loss, _ = layerwise_contrastive_loss(
            text_h, text_mask, speech_h, speech_mask, layer_weights=setting.layer_weights
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the scripts' --max_grad_norm
        optim.step()
    model.eval()
    dev_after = dev_layer_losses(model, dev_batches, layers)
    samples = (dev[i] for i in range(min(len(dev), opts.align_limit)))
    align = alignment_eval(model, tokenizer, samples, layers="all", batch_size=16)
    return {
        "setting": asdict(setting),
        "flags": setting.flags(),
        "history": history,
        "r1_after": {k: 100 * v["r1_speech2text"] for k, v in align.items()},
        "dev_loss_before": dev_before,
        "dev_loss_after": dev_after,
        "seconds": time.perf_counter() - t0,
    }


def default_settings(layers: list[int]) -> list[ProbeSetting]:
    """The settings compared: the paper's, and the three remedies alone and combined."""
    return [
        ProbeSetting("as paper"),
        ProbeSetting("deep layers x0.05", layer_weights=deep_layer_weights(layers, 0.05)),
        ProbeSetting("rms_match", output_norm="rms_match"),
        ProbeSetting("layernorm", output_norm="layernorm"),
        ProbeSetting(
            "rms_match + deep x0.2", output_norm="rms_match", layer_weights=deep_layer_weights(layers, 0.2)
        ),
        ProbeSetting("deep layers x0.2", layer_weights=deep_layer_weights(layers, 0.2)),
        ProbeSetting(
            "rms_match + deep x0.05", output_norm="rms_match", layer_weights=deep_layer_weights(layers, 0.05)
        ),
    ]


def _by_layer(values: dict, layer) -> float:
    """A per-layer value whether the keys are ints (fresh) or strings (read back from JSON)."""
    return values[int(layer)] if int(layer) in values else values[str(layer)]


def _dev(res: dict, key: str, layer) -> str:
    return f"{_by_layer(res[key], layer):.3f}" if key in res else "n/a"


def report_markdown(results: list[dict]) -> str:
    """Per setting: per-layer loss / gradient norm / speech pairwise cosine at the first and last
    recorded step, and R@1 after training."""
    lines = []
    for res in results:
        first, last = res["history"][0], res["history"][-1]
        lines += [
            f"### {res['setting']['name']}  (flags: {' '.join(res['flags']) or 'none'})",
            f"projector output norm {first['projector_output_norm']:.3g} -> {last['projector_output_norm']:.3g}; "
            f"token embedding norm {first['token_embedding_norm']:.3g}",
            "",
            "| layer | loss @0 | grad @0 | share @0 | speech cos @0 | text cos | loss @end | grad @end "
            "| speech cos @end | dev loss before → after | R@1 after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k in sorted(first["layers"], key=int):
            a, b = first["layers"][k], last["layers"][k]
            lines.append(
                f"| {k} | {a['loss']:.3f} | {a['grad_norm']:.3g} | {a['grad_share']:.2f} "
                f"| {a['speech_pairwise_cos']:.3f} | {a['text_pairwise_cos']:.3f} | {b['loss']:.3f} "
                f"| {b['grad_norm']:.3g} | {b['speech_pairwise_cos']:.3f} "
                f"| {_dev(res, 'dev_loss_before', k)} → {_dev(res, 'dev_loss_after', k)} "
                f"| {_by_layer(res['r1_after'], k):.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- real scale
def real_scale_numbers(seed: int = 0, rows: int = 4096, windows: int = 8) -> dict:
    """The scale mismatch at the paper's scale, from shapes and initialisations alone (no download).

    LLM side: Llama-3.1-8B's input-embedding table is [128256, 4096], initialised N(0, 0.02²)
    (its config's initializer_range); a row's expected norm is 0.02·sqrt(4096) ≈ 1.28 (measured on
    `rows` sampled rows). The trained table's norms need the real weights, which the option measures
    itself when the model is built. Projector side: the paper's Q-Former (768 wide, 4 layers, 12
    heads, FFN 3072, 4 queries per 17-frame window) with random weights, reading HuBERT-large's
    1024-wide features (its input LayerNorm makes the feature scale irrelevant), projecting to 4096.
    """
    from llava.model.projectors import build_projector

    torch.manual_seed(seed)
    vocab, width, init_std = 128256, 4096, 0.02
    sample = torch.randn(rows, width) * init_std
    llm_norm = float(sample.norm(dim=-1).mean())
    projector = build_projector("qformer", {}, encoder_dim=1024, llm_dim=width, frame_rate=50.0).eval()
    feats = torch.randn(2, 17 * windows, 1024) * 3.0  # [B, T, De]
    mask = torch.ones(2, 17 * windows, dtype=torch.bool)
    with torch.no_grad():
        out, out_mask = projector(feats, mask)
    proj_norm = float(out[out_mask].norm(dim=-1).mean())
    return {
        "llm_embedding_table_shape": [vocab, width],
        "llm_init_std": init_std,
        "llm_row_norm_expected": init_std * math.sqrt(width),
        "llm_row_norm_sampled": llm_norm,
        "qformer_output_norm_random_init": proj_norm,
        "qformer_output_norm_expected": math.sqrt(width / 3),
        "ratio": proj_norm / llm_norm,
    }


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.demo.diagnose", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gradients", help="per-layer losses and gradient norms of contr-cos-all settings")
    g.add_argument("--base", required=True, help="directory with encoder/ and llm/")
    g.add_argument("--corpus", required=True, help="synthetic corpus directory (configs/ inside)")
    g.add_argument("--out", required=True, help="where gradients.json / gradients.md go")
    g.add_argument("--steps", type=int, default=40)
    g.add_argument("--record-every", type=int, default=10)
    g.add_argument("--learning-rate", type=float, default=1e-3)
    g.add_argument("--seed", type=int, default=0, help="projector initialisation and batch order")
    g.add_argument("--settings", default="", help="comma-separated subset of the setting names")
    g.add_argument("--feature-cache", default=None, help="frozen-feature cache directory")
    r = sub.add_parser("real-scale", help="output-norm mismatch for Llama-3.1-8B and the paper's Q-Former")
    r.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.command == "real-scale":
        numbers = real_scale_numbers()
        text = json.dumps(numbers, indent=2)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "real_scale.json").write_text(text + "\n")
        print(text)
        return 0
    from llava.demo.variants import BUDGETS

    opts = ProbeOptions(
        steps=args.steps,
        record_every=args.record_every,
        learning_rate=args.learning_rate,
        seed=args.seed,
        projector=BUDGETS["default"].projector_options(),
        projector_type=BUDGETS["default"].projector_type,
    )
    base, corpus, out = Path(args.base), Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(base / "llm").num_hidden_layers
    settings = default_settings(resolve_layers("all", n_layers))
    wanted = [s for s in args.settings.split(",") if s]
    if wanted:
        known = [s.name for s in settings]
        if unknown := sorted(set(wanted) - set(known)):
            p.error(f"--settings: unknown {unknown}; known: {known}")
        settings = [s for s in settings if s.name in wanted]
    cache = Path(args.feature_cache) if args.feature_cache else None
    results = []
    for setting in settings:
        results.append(probe(base, corpus, setting, opts, cache))
        (out / "gradients.json").write_text(json.dumps(results, indent=2) + "\n")
        print(report_markdown(results[-1:]), flush=True)
    (out / "gradients.md").write_text(report_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
