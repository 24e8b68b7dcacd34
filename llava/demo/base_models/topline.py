"""`python -m llava.demo.base_models.topline --llm DIR --corpus DIR`: the text toplines of an LLM.

Scores a tiny LLM (or any chat LLM directory) on the study's prompts with the gold text in place of
the audio, per held-out split: as words (the text topline) and spelled letter by letter
(`chats.spelled`, the form in which the study's projector passes speech on). The spelled figures are
the ceiling of what the speech tasks can reach through that LLM: an SQA F1 near what a model ignoring
the passage gets means the LLM cannot answer from a spelled passage at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llava.demo.base_models.llm_recipe import saved_toplines


def toplines(
    llm_dir: str | Path,
    corpus: str | Path,
    splits: tuple[str, ...] = ("dev", "test"),
    per_split: int | None = None,
    seed: int = 42,
) -> dict:
    """`{split: {"words": {...}, "spelled": {...}, "words_repeat": {...}}}`: `words` and `spelled` are
    `topline_summary`s (repeat WER, BLEU, SQA F1); `words_repeat` details the repeat task with words
    (corpus WER, replies over 100 % WER, the worst reply), since one reply that runs on moves a mean
    of per-utterance WERs by several points.

    `per_split` limits the items per task (None: all); `seed` fixes the spelled forms' random doubling.
    """
    out = saved_toplines(llm_dir, corpus, per_split, seed, splits)
    details = ("wer_corpus", "num_over_100", "num_utterances", "worst")
    return {
        s: {
            "words": out["text_topline_summary"][s],
            "spelled": out["spelled_topline"][s],
            "words_repeat": {k: out["text_topline"][s]["ASR"].get(k) for k in details},
        }
        for s in splits
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava.demo.base_models.topline", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--llm", required=True, help="LLM directory (e.g. llava/demo/assets/base_models/llm)")
    p.add_argument("--corpus", required=True, help="synthetic corpus directory (python -m llava.demo.corpus)")
    p.add_argument("--splits", default="dev,test", help="comma-separated held-out splits (default: dev,test)")
    p.add_argument("--limit", type=int, default=None, help="items per task and split (default: all)")
    p.add_argument(
        "--seed", type=int, default=42, help="draws of the spelled forms (default: 42, as the build)"
    )
    args = p.parse_args(argv)
    result = toplines(args.llm, args.corpus, tuple(args.splits.split(",")), args.limit, args.seed)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
