"""`python -m llava.demo.projector_probe --base DIR --corpus DIR`: how fast does a projector learn ASR?

Trains a fresh projector on the corpus's ASR data alone (next-word prediction of the transcript
through the frozen LLM, the study's system turn and prompt layout) and prints the teacher-forced dev
NLL every `--eval-every` steps. With `--train-limit 16` it checks that the projector can memorise a
few utterances (the pipeline carries the gradient); on the whole training set it measures how quickly
the mapping speech -> inputs the LLM can read generalises, the step count the study's stage 1 and 2
would need. Frozen features come from `--feature-cache` when given (the study's cache directory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "audio_values", "audio_lengths")


def _nll(model, collator, samples: Sequence, batch_size: int) -> float:
    """Mean over batches of the LLM's token-averaged NLL of the transcripts."""
    losses = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = collator(samples[i : i + batch_size])
            losses.append(float(model(**{k: batch[k] for k in MODEL_KEYS}).loss))
    return sum(losses) / max(len(losses), 1)


def probe(
    base: str | Path,
    corpus: str | Path,
    steps: int = 1000,
    projector: str = "qformer",
    projector_options: dict | None = None,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    train_limit: int | None = None,
    dev_limit: int = 48,
    eval_every: int = 100,
    feature_cache: str | Path | None = None,
    seed: int = 0,
) -> list[dict]:
    """Dev (and memorised-set) NLL along the training of a fresh projector; one dict per evaluation."""
    from llava.dataset.collator import SpeechCollator
    from llava.dataset.dataset import SpeechDataset
    from llava.demo.base_models.chats import SYSTEM_PROMPT
    from llava.model import apply_training_mode, build_model
    from llava.model.feature_cache import attach_feature_cache

    base, corpus = Path(base), Path(corpus)
    config = corpus / "configs" / "pretrain_asr.yml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: not found (build the corpus with python -m llava.demo.corpus)")
    torch.manual_seed(seed)
    model, tokenizer = build_model(
        str(base / "encoder"), str(base / "llm"), projector_type=projector, projector_config=projector_options
    )
    apply_training_mode(model)
    if feature_cache is not None:
        attach_feature_cache(model.audio_tower, feature_cache)
    collator = SpeechCollator(tokenizer, model.num_audio_tokens, system_prompt=SYSTEM_PROMPT)
    train_set = SpeechDataset.from_config(config, "train", seed=seed)
    dev_set = SpeechDataset.from_config(config, "eval", train=False)
    n_train = len(train_set) if train_limit is None else min(train_limit, len(train_set))
    train = [train_set[i] for i in range(n_train)]
    dev = [dev_set[i] for i in range(min(dev_limit, len(dev_set)))]
    params = [p for p in model.projector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history, t0, running = [], time.perf_counter(), []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            model.eval()
            row = {"step": step, "dev_nll": _nll(model, collator, dev, 16)}
            if train_limit is not None:  # the memorised set's own NLL
                row["train_nll"] = _nll(model, collator, train, 16)
            if running:  # mean training-batch loss since the previous evaluation (train mode)
                row["train_loss"] = round(sum(running) / len(running), 4)
                running.clear()
            row["seconds"] = round(time.perf_counter() - t0, 1)
            history.append(row)
            model.train()
        if step == steps:
            break
        picks = torch.randint(0, len(train), (batch_size,), generator=gen).tolist()
        batch = collator([train[i] for i in picks])
        loss = model(**{k: batch[k] for k in MODEL_KEYS}).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the scripts' --max_grad_norm
        optimizer.step()
        running.append(float(loss.detach()))
    return history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava.demo.projector_probe", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--base", required=True, help="directory with encoder/ and llm/ (e.g. llava/demo/assets/base_models)"
    )
    p.add_argument("--corpus", required=True, help="synthetic corpus directory")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--projector", default="qformer", help="projector type (qformer, mlp, linear)")
    p.add_argument(
        "--projector-options", default=None, help='JSON, e.g. \'{"hidden_size": 128, "num_layers": 2}\''
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N utterances only")
    p.add_argument("--dev-limit", type=int, default=48)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--feature-cache", default=None, help="frozen-feature cache directory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    options = json.loads(args.projector_options) if args.projector_options else None
    history = probe(
        args.base,
        args.corpus,
        steps=args.steps,
        projector=args.projector,
        projector_options=options,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        eval_every=args.eval_every,
        feature_cache=args.feature_cache,
        seed=args.seed,
    )
    for row in history:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
