"""`python -m llava.demo.read_rate --llm DIR --corpus DIR`: can the LLM read its input at speech rate?

A projector hands the LLM many positions per second of speech (12 for 4 queries per 0.333 s window,
16.7 for the study's 3-frame stack), several per spoken word, where text has about one token per word. A large LLM reads such a
slowed-down input; a tiny one trained on text alone copies it literally ("the the cat cat sleeps
sleeps"), and then no projector can make it transcribe. This probe measures it directly: the repeat
task with every word of the gold transcript written `k` times (k = 1, 2, 3, ...) in place of the
audio, scored with the paper's WER, one row per k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from llava.demo.base_models.chats import TaskText, split_task_texts, text_topline


def repeated(item: TaskText, k: int) -> TaskText:
    """`item` with every word of its content written `k` times (the target unchanged)."""
    words = item.content.split()
    return TaskText(item.task, " ".join(w for w in words for _ in range(k)), item.target, item.question)


def read_rate(
    llm_dir: str | Path, corpus: str | Path, repeats: list[int], n: int = 50, split: str = "dev"
) -> dict:
    """Repeat-task WER (paper normalisation) of the LLM in `llm_dir` per word repetition count.

    Returns `{k: {"paper_wer": ..., "example": {...}}}` over the first `n` sentences of the split.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(llm_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    items = [it for it in split_task_texts(corpus, split) if it.task == "ASR"][:n]
    if not items:
        raise ValueError(f"{corpus}: no {split} sentences found")
    out = {}
    for k in repeats:
        scores = text_topline(model, tokenizer, [repeated(it, k) for it in items])["ASR"]
        out[k] = {"paper_wer": float(scores["paper_wer"]), "example": scores["example"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.demo.read_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", required=True, help="LLM directory (e.g. llava/demo/assets/base_models/llm)")
    p.add_argument("--corpus", required=True, help="synthetic corpus directory (python -m llava.demo.corpus)")
    p.add_argument("--repeats", default="1,2,3", help="comma-separated repetition counts (default 1,2,3)")
    p.add_argument("--n", type=int, default=50, help="sentences scored (default 50)")
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    repeats = [int(x) for x in args.repeats.split(",") if x.strip()]
    if not repeats or min(repeats) < 1:
        p.error("--repeats: positive integers, e.g. 1,2,3")
    result = read_rate(args.llm, args.corpus, repeats, args.n, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("| words repeated | repeat WER (paper) | example reply |")
    print("|---|---|---|")
    for k, row in result.items():
        print(f"| {k}x | {row['paper_wer']:.1f} | {row['example']['hyp']} |")
    print(f"mean over {len(repeats)} rates: {np.mean([r['paper_wer'] for r in result.values()]):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
