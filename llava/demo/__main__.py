"""`python -m llava.demo [--smoke] [--seeds N] [--out DIR] [--variants a,b]`: the study in miniature.

Builds the synthetic corpus, loads the shipped tiny base models (or builds them), runs every
pretraining variant through scripts/pretrain/*.sh, fine-tunes each on 10 % of the task data through
scripts/finetune/*.sh, evaluates, fine-tunes the best variant once on 100 %, and writes
results.md / results.json and plots. Finished phases are reused when the command is run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from llava.demo.phases import PhaseError
from llava.demo.pipeline import Study
from llava.demo.variants import BUDGETS, VARIANTS, Budget


def override(budget: Budget, items: list[str]) -> Budget:
    """`budget` with FIELD=VALUE items applied (values parsed as the field's current type)."""
    fields = {f.name for f in dataclasses.fields(budget)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(budget, name)
        if isinstance(current, bool):
            changes[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float, str)):
            changes[name] = type(current)(value)
        elif isinstance(current, tuple):
            changes[name] = tuple(v for v in value.split(",") if v)
        elif isinstance(current, dict):  # JSON, e.g. projector={"stack": 3}
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"--set {name}: expected a JSON object, got {value!r} ({exc})") from exc
            if not isinstance(parsed, dict):
                raise ValueError(f"--set {name}: expected a JSON object, got {value!r}")
            changes[name] = parsed
        else:
            raise ValueError(f"--set {name}: this field cannot be set from the command line")
    return dataclasses.replace(budget, **changes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the smallest run (CI): tiny corpus, a few steps")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per variant (default 3; smoke 2)")
    p.add_argument("--out", default="outputs/demo", help="output directory (finished phases are reused)")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {list(VARIANTS)} (default: {','.join(BUDGETS['default'].variants)}; smoke: {','.join(BUDGETS['smoke'].variants)})",
    )
    p.add_argument("--no-full-data", action="store_true", help="skip the 100 %% run of the best variant")
    p.add_argument("--base-models", default=None, help="use DIR/encoder and DIR/llm as the base models")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="(seed, variant) chains run in parallel, one process per core (default: min(2, cores))",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a budget field, e.g. --set pretrain_steps=200 (see llava.demo.pipeline.Budget)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    budget = BUDGETS["smoke" if args.smoke else "default"]
    try:
        budget = override(budget, args.set)
    except ValueError as exc:
        p.error(str(exc))
    variants = (
        [v for v in args.variants.split(",") if v] if args.variants else list(budget.variants or VARIANTS)
    )
    seeds = budget.seeds if args.seeds is None else args.seeds
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    if seeds < 1:
        p.error("--seeds must be >= 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(out).free / 1e9
    if free_gb < 2:
        print(f"error: only {free_gb:.1f} GB free under {out}; the study needs about 2 GB", file=sys.stderr)
        return 2
    study = Study(
        out,
        budget,
        list(range(seeds)),
        variants,
        progress=not args.no_progress,
        full_data=not args.no_full_data,
        base_dir=Path(args.base_models) if args.base_models else None,
        workers=args.workers if args.workers is not None else min(2, os.cpu_count() or 1),
    )
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
