"""A tiny Llama trained from scratch on the corpus text, saved like a real instruct checkpoint.

Training text mixes plain sentences (rendered as `<|begin_of_text|> text <|end_of_text|>`, the
format of mixed speech-text sequences) and chat conversations rendered with the tokenizer's chat
template (the format of every task prompt), packed into fixed-length blocks. The saved directory
holds the model (safetensors), its generation config and the tokenizer, so
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it as
they would load `meta-llama/Llama-3.1-8B-Instruct`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from llava.demo.base_models.schedule import lr_factor
from llava.demo.base_models.tokenizer import EOS, EOT

logger = logging.getLogger(__name__)

# A training example: a plain text, or a conversation as chat-template messages.
Message = dict[str, str]
TextExample = str | list[Message]


def default_llm_config(tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamaConfig:
    """The tiny LLM architecture (about 4 M parameters at vocabulary 2000); `overrides` win."""
    vocab = tokenizer.get_vocab()
    cfg = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Llama-3
        intermediate_size=1024,
        # The pipeline shifts positions by up to 400 on top of prompts of a few hundred tokens.
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        # Like Llama-3.1-Instruct: generation ends at end-of-text or end-of-turn.
        eos_token_id=[vocab[t] for t in (EOS, EOT) if t in vocab] or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


@dataclass
class LlmTrainArgs:
    """Optimisation settings of `train_tiny_llm`."""

    time_budget_s: float | None = 120.0  # wall-clock training budget; the LR schedule follows it
    max_steps: int = 100_000  # step cap; whichever of this and the time budget ends first
    batch_size: int = 16  # blocks per step
    block_size: int = 256  # tokens per packed block
    prompt_loss_weight: float = 1.0  # loss weight of conversation tokens before the final reply
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # linear warm-up over this fraction of the run
    decay_frac: float | None = None  # cosine to 0 over this last fraction of the run, constant LR
    # before it (None: cosine from the end of the warm-up)
    # "window": random windows of the concatenated stream (examples cut at window edges);
    # "whole": blocks filled with whole examples and padding, so no reply is trained without its prompt.
    packing: str = "window"
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = False  # bf16 autocast of the forward pass (loss in fp32); slower than fp32 for
    # these small matrices on CPUs without AMX
    seed: int = 42
    max_dev_tokens: int = 65_536  # dev tokens scored for perplexity
    log_every: int = 25  # steps between progress log lines
    eval_every: int = 0  # steps between calls of `train_tiny_llm`'s `evaluate` callback (0: never)
    checkpoint_every: int = 0  # steps between resumable checkpoints in `train_tiny_llm`'s `resume_dir`


def encode_example(
    example: TextExample, tokenizer: PreTrainedTokenizerBase, prompt_weight: float = 1.0
) -> tuple[list[int], list[float]]:
    """Token ids of one example and their loss weights.

    A plain text becomes BOS + text + end-of-text (all weight 1). A conversation is rendered with
    the chat template; tokens of the final assistant reply (and its `<|eot_id|>`) weigh 1, the
    tokens before it `prompt_weight`.
    """
    if isinstance(example, str):
        ids = tokenizer(example)["input_ids"]
        if not ids or ids[0] != tokenizer.bos_token_id:  # tokenizers that do not add BOS themselves
            ids = [tokenizer.bos_token_id, *ids]
        end = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
        return [*ids, end], [1.0] * (len(ids) + 1)
    text = tokenizer.apply_chat_template(example, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_prompt = 0
    if prompt_weight != 1.0 and example and example[-1].get("role") == "assistant":
        prefix = tokenizer.apply_chat_template(example[:-1], tokenize=False, add_generation_prompt=True)
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        # The template ends the prefix with a header and "\n\n", so the reply's tokens start fresh.
        if ids[: len(prefix_ids)] == prefix_ids:
            n_prompt = len(prefix_ids)
    return ids, [prompt_weight] * n_prompt + [1.0] * (len(ids) - n_prompt)


def encode_examples(
    examples: Sequence[TextExample], tokenizer: PreTrainedTokenizerBase, prompt_weight: float = 1.0
) -> list[tuple[list[int], list[float]]]:
    """`encode_example` of every example, with one batched tokenizer call per kind (much faster)."""
    out: list[tuple[list[int], list[float]] | None] = [None] * len(examples)
    plain = [i for i, e in enumerate(examples) if isinstance(e, str)]
    chats = [i for i, e in enumerate(examples) if not isinstance(e, str)]
    if plain:
        end = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
        for i, ids in zip(plain, tokenizer([examples[i] for i in plain])["input_ids"]):
            if not ids or ids[0] != tokenizer.bos_token_id:
                ids = [tokenizer.bos_token_id, *ids]
            out[i] = ([*ids, end], [1.0] * (len(ids) + 1))
    if chats:
        texts = [tokenizer.apply_chat_template(examples[i], tokenize=False) for i in chats]
        all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        prefixes: list[list[int] | None] = [None] * len(chats)
        if prompt_weight != 1.0:
            replied = [
                k for k, i in enumerate(chats) if examples[i] and examples[i][-1].get("role") == "assistant"
            ]
            prefix_texts = [
                tokenizer.apply_chat_template(
                    examples[chats[k]][:-1], tokenize=False, add_generation_prompt=True
                )
                for k in replied
            ]
            for k, ids in zip(replied, tokenizer(prefix_texts, add_special_tokens=False)["input_ids"]):
                prefixes[k] = ids
        for k, (i, ids) in enumerate(zip(chats, all_ids)):
            prefix = prefixes[k]
            n_prompt = len(prefix) if prefix is not None and ids[: len(prefix)] == prefix else 0
            out[i] = (ids, [prompt_weight] * n_prompt + [1.0] * (len(ids) - n_prompt))
    return out  # type: ignore[return-value]


def _stream(
    examples: Sequence[TextExample], tokenizer, rng: np.random.Generator | None, prompt_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """All examples (shuffled when `rng` is given) concatenated: token ids [N] and loss weights [N]."""
    order = rng.permutation(len(examples)) if rng is not None else range(len(examples))
    encoded = encode_examples([examples[i] for i in order], tokenizer, prompt_weight)
    ids = np.fromiter((t for doc_ids, _ in encoded for t in doc_ids), dtype=np.int64)
    weights = np.fromiter((w for _, doc_weights in encoded for w in doc_weights), dtype=np.float32)
    return ids, weights


def pack_whole(
    encoded: Sequence[tuple[list[int], list[float]]], block: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Examples packed whole, in order, into blocks of `block` tokens: ids [N, block], weights [N, block].

    An example goes into the current block if it fits, else starts a new one; the rest of a block is
    padding with weight 0. An example longer than a block is cut to its first `block` tokens.
    """
    rows: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for doc_ids, doc_weights in encoded:
        doc_ids, doc_weights = doc_ids[:block], doc_weights[:block]
        if ids and len(ids) + len(doc_ids) > block:
            rows.append((ids, weights))
            ids, weights = [], []
        ids = ids + doc_ids
        weights = weights + doc_weights
    if ids:
        rows.append((ids, weights))
    out_ids = np.full((len(rows), block), pad_id, dtype=np.int64)
    out_w = np.zeros((len(rows), block), dtype=np.float32)
    for r, (row_ids, row_w) in enumerate(rows):
        out_ids[r, : len(row_ids)] = row_ids
        out_w[r, : len(row_w)] = row_w
    return out_ids, out_w


def _weighted_nll(
    logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of weighted next-token NLLs and sum of weights; logits [B, L, V], ids/weights [B, L]."""
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
    )  # [B * (L-1)]
    w = weights[:, 1:].flatten()
    return (nll * w).sum(), w.sum()


@torch.no_grad()
def dev_loss(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TextExample],
    prompt_weight: float = 1.0,
    max_tokens: int = 65_536,
    bf16: bool = False,
) -> float:
    """Weighted mean next-token NLL of `examples`, each scored on its own (no packing).

    With `prompt_weight=0` only the final assistant replies of conversations count.
    """
    encoded = sorted(encode_examples(examples, tokenizer, prompt_weight), key=lambda e: len(e[0]))
    budget, kept = max_tokens, []
    for ids, weights in encoded:  # shortest first: the token cap drops the longest examples
        if budget < len(ids) and kept:
            break
        kept.append((ids, weights))
        budget -= len(ids)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(kept), 16):
        chunk = kept[start : start + 16]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # [b, L], right-padded
        weights = torch.zeros((len(chunk), width))  # [b, L], 0 on padding
        for row, (doc_ids, doc_weights) in enumerate(chunk):
            ids[row, : len(doc_ids)] = torch.tensor(doc_ids)
            weights[row, : len(doc_ids)] = torch.tensor(doc_weights)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids).logits  # [b, L, V]; causal: right padding changes nothing
        nll, w = _weighted_nll(logits, ids, weights)
        total += float(nll)
        count += float(w)
    model.train(was_training)
    return total / max(count, 1e-9)


@torch.no_grad()
def generate_replies(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[Message]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy assistant replies to `conversations` (each ending with a user turn)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[start : start + batch_size]
            ]
            enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [r.strip() for r in replies]


def _save_checkpoint(path: Path, model, optimizer, rng, step, losses, curve, identity, elapsed) -> None:
    """Everything an interrupted run needs to continue exactly (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": json.dumps(rng.bit_generator.state),
        "step": step,
        "losses": [float(x) for x in losses],
        "curve": json.dumps(curve),
        "identity": json.dumps(identity),
        "elapsed": float(elapsed),
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_tiny_llm(
    train_examples: Sequence[TextExample],
    dev_examples: Sequence[TextExample],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    config: dict | None = None,
    args: LlmTrainArgs | None = None,
    evaluate: Callable[[LlamaForCausalLM], dict] | None = None,
    resume_dir: str | Path | None = None,
    init_from: str | Path | None = None,
) -> dict:
    """Train a tiny `LlamaForCausalLM` on packed text/chat examples; save model + tokenizer to `out_dir`.

    `config` overrides fields of `default_llm_config(tokenizer)`. The loss covers every token of the
    packed blocks (prompts included: the model has to learn the languages, not just the replies).
    Returns a report (parameters, steps, tokens, time, dev loss and perplexity), also written to
    `out_dir/train_report.json`. `evaluate(model)`, called every `args.eval_every` steps, returns
    figures logged and kept in the report's `curve`.

    With `resume_dir` and `args.checkpoint_every`, the model, optimizer, sampling-generator state and
    step are saved there every `checkpoint_every` steps; a later call with the same arguments resumes
    from the last one and ends with the same weights as an uninterrupted run (step-counted budgets
    only). The checkpoint is removed when training ends.

    `init_from` continues a saved model (its weights and config; `config` is then ignored) instead of
    starting from a random one: a later phase of a recipe.
    """
    args = args or LlmTrainArgs()
    if not train_examples:
        raise ValueError("train_tiny_llm needs at least one training example")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if init_from is not None:
        model = LlamaForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
    else:
        model = LlamaForCausalLM(default_llm_config(tokenizer, **(config or {})))
    model.train()

    if args.packing not in ("window", "whole"):
        raise ValueError(f"LlmTrainArgs.packing: unknown value {args.packing!r}; known: ['whole', 'window']")
    if args.packing == "whole":
        order = rng.permutation(len(train_examples))
        encoded = encode_examples([train_examples[i] for i in order], tokenizer, args.prompt_loss_weight)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        blocks, block_weights = pack_whole(encoded, args.block_size, pad)  # [N, L], [N, L]
        n_tokens = sum(min(len(ids), args.block_size) for ids, _ in encoded)
        block = args.block_size
    else:
        train_stream, train_weights = _stream(train_examples, tokenizer, rng, args.prompt_loss_weight)
        n_tokens = len(train_stream)
        block = min(args.block_size, n_tokens - 1)
    if block < 2:
        raise ValueError(f"training text too short: {n_tokens} tokens")

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "norm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    start = time.monotonic()
    step, losses = 0, []
    curve: list[dict] = []
    ckpt = (
        Path(resume_dir) / "llm_checkpoint.pt" if resume_dir is not None and args.checkpoint_every else None
    )
    identity = {"args": asdict(args), "config": model.config.to_diff_dict(), "examples": len(train_examples)}
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if json.loads(state["identity"]) == json.loads(json.dumps(identity)):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = json.loads(state["rng"])
            step, losses, curve = int(state["step"]), list(state["losses"]), json.loads(state["curve"])
            start -= float(state["elapsed"])
            logger.info("resumed the LLM from %s at step %d", ckpt, step)
        else:
            logger.warning("%s belongs to other settings: starting afresh", ckpt)
    while True:
        elapsed = time.monotonic() - start
        progress = step / args.max_steps
        if args.time_budget_s:
            progress = max(progress, elapsed / args.time_budget_s)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(progress, args.warmup_frac, args.decay_frac)
        if args.packing == "whole":  # random blocks of whole examples
            rows = rng.integers(0, len(blocks), size=args.batch_size)
            batch = torch.from_numpy(blocks[rows])  # [B, L]
            weights = torch.from_numpy(block_weights[rows])  # [B, L]
        else:  # random windows of the stream: each step sees fresh document boundaries
            starts = rng.integers(0, len(train_stream) - block, size=args.batch_size)
            batch = torch.from_numpy(np.stack([train_stream[s : s + block] for s in starts]))  # [B, L]
            weights = torch.from_numpy(np.stack([train_weights[s : s + block] for s in starts]))  # [B, L]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch).logits  # [B, L, V]
        nll, w = _weighted_nll(logits, batch, weights)
        loss = nll / w.clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if step % args.log_every == 0:
            logger.info(
                "llm step %d loss %.3f lr %.2e %.0fs",
                step,
                float(np.mean(losses[-args.log_every :])),
                optimizer.param_groups[0]["lr"],
                elapsed,
            )
        if evaluate is not None and args.eval_every and step % args.eval_every == 0:
            figures = {"step": step, "time_s": round(elapsed, 1), **evaluate(model)}
            model.train()
            curve.append(figures)
            logger.info("llm eval %s", json.dumps(figures))
        if ckpt is not None and step % args.checkpoint_every == 0:
            _save_checkpoint(
                ckpt, model, optimizer, rng, step, losses, curve, identity, time.monotonic() - start
            )
    train_time = time.monotonic() - start
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)

    report = {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "steps": step,
        "tokens_seen": step * args.batch_size * block,
        "train_tokens": int(n_tokens),
        "train_time_s": round(train_time, 1),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": float(np.mean(losses[-args.log_every :])) if losses else None,
        "args": asdict(args),
        "curve": curve,
    }
    if dev_examples:
        # Perplexity over every token, and over the assistant replies of the conversations alone.
        nll = dev_loss(model, tokenizer, dev_examples, 1.0, args.max_dev_tokens, args.bf16)
        report.update(dev_loss=nll, dev_ppl=math.exp(nll))
        chats = [e for e in dev_examples if not isinstance(e, str)]
        if chats:
            nll = dev_loss(model, tokenizer, chats, 0.0, args.max_dev_tokens, args.bf16)
            report.update(dev_reply_loss=nll, dev_reply_ppl=math.exp(nll))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
