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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from llava.tiny.tokenizer import EOS, EOT

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
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # linear warm-up over this fraction of the run, then cosine to 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = False  # bf16 autocast of the forward pass (loss in fp32); slower than fp32 for
    # these small matrices on CPUs without AMX
    seed: int = 42
    max_dev_tokens: int = 65_536  # dev tokens scored for perplexity
    log_every: int = 25  # steps between progress log lines


def encode_example(example: TextExample, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of one example: BOS + text + end-of-text, or the chat-template rendering."""
    if isinstance(example, str):
        ids = tokenizer(example)["input_ids"]
        if not ids or ids[0] != tokenizer.bos_token_id:  # tokenizers that do not add BOS themselves
            ids = [tokenizer.bos_token_id, *ids]
        end = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
        return [*ids, end]
    text = tokenizer.apply_chat_template(example, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _stream(examples: Sequence[TextExample], tokenizer, rng: np.random.Generator | None) -> np.ndarray:
    order = rng.permutation(len(examples)) if rng is not None else range(len(examples))
    ids = [encode_example(examples[i], tokenizer) for i in order]
    return np.fromiter((t for doc in ids for t in doc), dtype=np.int64)


def _lr_factor(progress: float, warmup_frac: float) -> float:
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup_frac) / (1.0 - warmup_frac))))


@torch.no_grad()
def dev_loss(
    model: LlamaForCausalLM, stream: np.ndarray, block_size: int, max_tokens: int, bf16: bool = False
) -> float:
    """Mean next-token NLL over consecutive `block_size` blocks of the dev token stream."""
    n_blocks = min(len(stream) // block_size, max(1, max_tokens // block_size))
    if n_blocks == 0:  # shorter than a block: score it whole
        blocks = torch.from_numpy(stream)[None]
    else:
        blocks = torch.from_numpy(stream[: n_blocks * block_size]).view(n_blocks, block_size)  # [N, L]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in blocks.split(16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=chunk).logits  # [b, L, V]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
        )
        total += float(nll)
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1)


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


def train_tiny_llm(
    train_examples: Sequence[TextExample],
    dev_examples: Sequence[TextExample],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    config: dict | None = None,
    args: LlmTrainArgs | None = None,
) -> dict:
    """Train a tiny `LlamaForCausalLM` on packed text/chat examples; save model + tokenizer to `out_dir`.

    `config` overrides fields of `default_llm_config(tokenizer)`. The loss covers every token of the
    packed blocks (prompts included: the model has to learn the languages, not just the replies).
    Returns a report (parameters, steps, tokens, time, dev loss and perplexity), also written to
    `out_dir/train_report.json`.
    """
    args = args or LlmTrainArgs()
    if not train_examples:
        raise ValueError("train_tiny_llm needs at least one training example")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = LlamaForCausalLM(default_llm_config(tokenizer, **(config or {})))
    model.train()

    train_stream = _stream(train_examples, tokenizer, rng)
    dev_stream = _stream(dev_examples, tokenizer, None) if dev_examples else None
    block = min(args.block_size, len(train_stream) - 1)
    if block < 2:
        raise ValueError(f"training text too short: {len(train_stream)} tokens")

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "norm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    start = time.monotonic()
    step, losses = 0, []
    while True:
        elapsed = time.monotonic() - start
        progress = step / args.max_steps
        if args.time_budget_s:
            progress = max(progress, elapsed / args.time_budget_s)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * _lr_factor(progress, args.warmup_frac)
        # Random windows of the packed stream: each step sees fresh document boundaries.
        starts = rng.integers(0, len(train_stream) - block, size=args.batch_size)
        batch = torch.from_numpy(np.stack([train_stream[s : s + block] for s in starts]))  # [B, L]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch).logits  # [B, L, V]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten())
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
    train_time = time.monotonic() - start

    report = {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "steps": step,
        "tokens_seen": step * args.batch_size * block,
        "train_tokens": int(len(train_stream)),
        "train_time_s": round(train_time, 1),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": float(np.mean(losses[-args.log_every :])) if losses else None,
        "args": asdict(args),
    }
    if dev_stream is not None and len(dev_stream) > 1:
        nll = dev_loss(model, dev_stream, block, args.max_dev_tokens, args.bf16)
        report.update(dev_loss=nll, dev_ppl=math.exp(nll))

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
