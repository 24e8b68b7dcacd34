"""`python -m llava.demo.corpus --out DIR --size small --seed 0`: build the synthetic corpus."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from llava.demo.corpus.build import SIZES, build_corpus
from llava.demo.corpus.espeak import EspeakUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.demo.corpus",
        description="Build the synthetic spoken corpus (espeak-ng speech; ASR, en-de ST, SQA, mixed NWP).",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="corpus size (default: small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files")
    parser.add_argument("--workers", type=int, default=None, help="synthesis processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR holds this corpus already")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = build_corpus(
            args.out, size=args.size, seed=args.seed, workers=args.workers, force=args.force
        )
    except EspeakUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("size", "seed", "counts", "hours", "build_seconds")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
