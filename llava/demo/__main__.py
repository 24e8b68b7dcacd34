"""`python -m llava.demo [--smoke] [--seeds N] [--out DIR]`: the study in miniature, end to end."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from llava.demo.phases import PhaseError
from llava.demo.pipeline import BUDGETS, VARIANTS, Study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.demo", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="the smallest run (CI): tiny corpus, a few steps")
    p.add_argument("--seeds", type=int, default=1, help="repeat training with N seeds; report mean ± std")
    p.add_argument("--out", default="outputs/demo", help="output directory (finished phases are reused)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(out).free / 1e9
    if free_gb < 2:
        print(f"error: only {free_gb:.1f} GB free under {out}; the study needs about 2 GB", file=sys.stderr)
        return 2
    study = Study(out, BUDGETS["smoke" if args.smoke else "default"], list(range(args.seeds)), variants)
    t0 = time.perf_counter()
    try:
        study.run()
    except PhaseError as exc:
        print(
            f"error: {exc}\nRe-run the same command to continue from the last finished phase.",
            file=sys.stderr,
        )
        return 1
    print((out / "results.md").read_text())
    print(f"total wall time {time.perf_counter() - t0:.0f} s; results, plots and logs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
