"""`python -m llava.demo.base_models.ship --out DIR`: rebuild the shipped base models from their seed.

Steps: build the synthetic corpus (`--corpus-size`, `--corpus-seed`; default small / 0, the study's
corpus) into DIR/corpus unless `--corpus` names one; train the tokenizer, the tiny LLM and the tiny
encoder with a step-counted budget (default `ship`) on one thread with deterministic kernels into
DIR/build; write DIR/base_models.json (sha256 of every model file, the command, corpus, figures).

- `--check` compares the rebuild's hashes with the shipped record (`llava/demo/assets/base_models.json`)
  and exits with status 1 listing the files that differ;
- `--install` replaces the shipped models and record with the rebuild; with `--only llm` (or
  `encoder`) it replaces that model alone and keeps the other as shipped (`install_part`): the way to
  ship a changed recipe of one model without retraining the other, whose budget fields are unchanged.
- `--llm-seed` / `--encoder-seed` give one model a seed other than `--seed` (the models share no random
  state); the record keeps each model's seed and a command that rebuilds both.

The same library versions (torch, transformers, tokenizers) on the same kind of CPU rebuild
identical bytes; the record names the versions used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from llava.demo.base_models.shipped import (
    EXCLUDED_FILES,
    MODEL_NAMES,
    MODELS_DIR,
    RECORD_PATH,
    ShippedModelsError,
    compare_files,
    model_files,
    read_record,
    verify_models,
)

logger = logging.getLogger("llava.demo.base_models.ship")


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """One intra-op thread and deterministic kernels (floating-point sums in a fixed order) inside."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "machine": platform.machine(),
    }


def ship_command(budget: str, seeds: dict[str, int], corpus: dict | None = None) -> str:
    """The command that rebuilds models of `budget` with each model's seed (`{"llm": .., "encoder": ..}`)
    from the corpus described by `corpus` (the record's `size` and `seed`; the study's when omitted).
    The work directory is the user's choice."""
    if seeds["llm"] == seeds["encoder"]:
        flags = f" --seed {seeds['llm']}"
    else:
        flags = f" --llm-seed {seeds['llm']} --encoder-seed {seeds['encoder']}"
    size, corpus_seed = (corpus or {}).get("size", "small"), (corpus or {}).get("seed", 0)
    if (size, corpus_seed) != ("small", 0):
        flags += f" --corpus-size {size} --corpus-seed {corpus_seed}"
    return f"python -m llava.demo.base_models.ship --out DIR --budget {budget}{flags}"


def record_seeds(record: dict) -> dict[str, int]:
    """Each shipped model's seed (records written before per-model seeds name one `seed` for both)."""
    return dict(record.get("seeds") or {name: record.get("seed") for name in MODEL_NAMES})


def rebuild(
    out: str | os.PathLike,
    budget: str = "ship",
    seed: int = 42,
    corpus: str | os.PathLike | None = None,
    corpus_size: str = "small",
    corpus_seed: int = 0,
    parts: tuple[str, ...] = ("llm", "encoder"),
    force: bool = True,
    seeds: dict[str, int] | None = None,
) -> dict | None:
    """Build corpus (if not given) and base models into `out`; write and return `out/base_models.json`.

    With `force=False`, models already finished in `out/build` with the same budget and seed are kept
    (so two processes can build `parts=("llm",)` and `("encoder",)` side by side, then a last call
    collects them). `seeds` overrides `seed` for one model. Returns None when only one part was built.
    """
    from llava.demo.base_models.build import BUDGETS, build_all, part_seed_map
    from llava.demo.corpus import build_corpus

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; known: {sorted(BUDGETS)}")
    if not BUDGETS[budget].deterministic:
        raise ValueError(
            f"budget {budget!r} is counted in seconds, not steps: its models are not reproducible"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if corpus is None:
        corpus = out / "corpus"
        manifest = build_corpus(corpus, size=corpus_size, seed=corpus_seed, workers=1)
    else:
        corpus = Path(corpus)
        manifest = json.loads((corpus / "manifest.json").read_text())
    corpus_time = time.monotonic() - t0
    part_seeds = part_seed_map(seed, seeds)
    with deterministic_torch():
        report = build_all(
            corpus, out / "build", budget=budget, seed=seed, force=force, parts=parts, seeds=part_seeds
        )
    if len(set(parts)) < 2:
        return None
    corpus_info = {k: manifest.get(k) for k in ("format", "size", "seed")}
    record = {
        "command": ship_command(budget, part_seeds, corpus_info),
        "budget": budget,
        "seeds": part_seeds,
        "corpus": corpus_info,
        "versions": _versions(),
        # Wall seconds of each step when built one after the other on one thread (a reused corpus
        # counts with its own recorded build time).
        "build_time_s": _times(manifest, corpus_time, report),
        "figures": report["summary"],
        "files": model_files(out / "build"),
    }
    (out / "base_models.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _build_seconds(report: dict) -> float:
    """Wall seconds one model's build took (all its phases; the training time for older reports)."""
    return report.get("build_wall_s", report.get("train_time_s")) or 0.0


def _times(manifest: dict, corpus_time: float, report: dict) -> dict:
    corpus_s = corpus_time if corpus_time > 1.0 else float(manifest.get("build_seconds", corpus_time))
    times = {
        "corpus": corpus_s,
        "llm": _build_seconds(report["llm"]),
        "encoder": _build_seconds(report["encoder"]),
    }
    times["total"] = sum(times.values())
    return {k: round(v, 1) for k, v in times.items()}


def install(
    build_dir: str | os.PathLike,
    record: dict,
    models_dir: str | os.PathLike = MODELS_DIR,
    record_path: str | os.PathLike = RECORD_PATH,
    names: tuple[str, ...] = MODEL_NAMES,
) -> None:
    """Replace the shipped models (or those in `names`) and the record with those of `build_dir` (the
    rebuild's DIR/build); the record must describe every shipped model afterwards."""
    models_dir, record_path = Path(models_dir), Path(record_path)
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (models_dir / name).exists():
            shutil.rmtree(models_dir / name)
        shutil.copytree(
            Path(build_dir) / name, models_dir / name, ignore=shutil.ignore_patterns(*EXCLUDED_FILES)
        )
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    verify_models(models_dir, read_record(record_path))


def install_part(
    build_dir: str | os.PathLike,
    part: str,
    budget: str,
    seed: int,
    models_dir: str | os.PathLike = MODELS_DIR,
    record_path: str | os.PathLike = RECORD_PATH,
) -> dict:
    """Replace one shipped model (`llm` or `encoder`) with `build_dir/part`, built with `seed`; keep the
    other as shipped.

    The other model must still match the record, and the record must name the same budget (its build
    command then rebuilds both: the kept model's budget fields are the ones it was built with, or
    `parts.finished` would not have kept it in a full rebuild either). The record's files, figures,
    versions, build time and seed of `part` are updated, and its command names both seeds; the new
    record is returned.
    """
    from llava.demo.base_models.build import part_summary
    from llava.demo.base_models.parts import REPORT_NAME

    if part not in MODEL_NAMES:
        raise ValueError(f"unknown part {part!r}; known: {sorted(MODEL_NAMES)}")
    models_dir, record_path, build_dir = Path(models_dir), Path(record_path), Path(build_dir)
    record = read_record(record_path)
    if record.get("budget") != budget:
        raise ShippedModelsError(
            f"{record_path}: the shipped models were built with budget {record.get('budget')!r}, not "
            f"{budget!r}: rebuild both models (without --only)"
        )
    (other,) = [name for name in MODEL_NAMES if name != part]
    kept = {rel: sha for rel, sha in record["files"].items() if rel.startswith(f"{other}/")}
    problems = compare_files(model_files(models_dir, (other,)), kept)
    if problems:
        raise ShippedModelsError(
            f"{models_dir / other}: does not match {record_path}: " + "; ".join(problems)
        )
    report = json.loads((build_dir / part / REPORT_NAME).read_text())
    fresh = model_files(build_dir, (part,))
    # The kept model was built with the record's library versions; where they differ from today's, they
    # stay on record as `versions_<model>` (a `transformers_version` string is part of its config bytes).
    versions = _versions()
    kept_versions = record.pop(f"versions_{other}", record.get("versions"))
    record.pop(f"versions_{part}", None)
    if kept_versions != versions:
        record[f"versions_{other}"] = kept_versions
    seeds = {**record_seeds(record), part: seed}
    record.pop("seed", None)
    record = {
        **record,
        "command": ship_command(budget, seeds, record.get("corpus")),
        "seeds": seeds,
        "versions": versions,
        "figures": {**record.get("figures", {}), **part_summary(part, report)},
        "files": dict(sorted({**kept, **fresh}.items())),
    }
    times = dict(record.get("build_time_s", {}))
    times[part] = round(_build_seconds(report), 1)
    times["total"] = round(sum(v for k, v in times.items() if k != "total"), 1)
    record["build_time_s"] = times
    install(build_dir, record, models_dir, record_path, names=(part,))
    return record


def main(argv: list[str] | None = None) -> int:
    from llava.demo.base_models.build import BUDGETS
    from llava.demo.corpus import SIZES

    parser = argparse.ArgumentParser(
        prog="python -m llava.demo.base_models.ship",
        description="Rebuild the shipped tiny base models bit for bit (one thread, deterministic kernels).",
    )
    parser.add_argument("--out", required=True, help="work directory: corpus/, build/, base_models.json")
    parser.add_argument(
        "--budget",
        default="ship",
        choices=sorted(b for b, spec in BUDGETS.items() if spec.deterministic),
        help="step-counted budget (default: ship, the shipped models; smoke: a quick check)",
    )
    parser.add_argument("--seed", type=int, default=42, help="training seed (default: 42)")
    parser.add_argument("--llm-seed", type=int, default=None, help="the LLM's seed (default: --seed)")
    parser.add_argument("--encoder-seed", type=int, default=None, help="the encoder's seed (default: --seed)")
    parser.add_argument("--corpus", default=None, help="an existing corpus directory (default: build one)")
    parser.add_argument("--corpus-size", default="small", choices=sorted(SIZES), help="(default: small)")
    parser.add_argument("--corpus-seed", type=int, default=0, help="(default: 0, the study's corpus)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the shipped record; exit 1 if different"
    )
    parser.add_argument("--install", action="store_true", help="replace the shipped models with the rebuild")
    parser.add_argument(
        "--record",
        default=str(RECORD_PATH),
        help="the record --check compares with (default: the shipped one)",
    )
    parser.add_argument(
        "--only", choices=["llm", "encoder"], default=None, help="build one model (run both side by side)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep models already finished in DIR/build (same budget and seed)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seeds = {"llm": args.seed if args.llm_seed is None else args.llm_seed}
    seeds["encoder"] = args.seed if args.encoder_seed is None else args.encoder_seed
    record = rebuild(
        args.out,
        budget=args.budget,
        seed=args.seed,
        corpus=args.corpus,
        corpus_size=args.corpus_size,
        corpus_seed=args.corpus_seed,
        parts=(args.only,) if args.only else ("llm", "encoder"),
        force=not (args.keep or args.only),
        seeds=seeds,
    )
    if record is None:
        print(f"built {args.only} in {Path(args.out) / 'build' / args.only}")
        if args.install:
            install_part(Path(args.out) / "build", args.only, args.budget, seeds[args.only])
            print(f"installed {args.only} into {MODELS_DIR / args.only}; the other shipped model kept")
        return 0
    print(json.dumps({k: record[k] for k in ("build_time_s", "figures")}, indent=2))
    status = 0
    if args.check:
        problems = compare_files(record["files"], read_record(args.record)["files"])
        if problems:
            print(f"rebuild differs from {args.record}:\n  " + "\n  ".join(problems), file=sys.stderr)
            status = 1
        else:
            print(f"rebuild matches {args.record} ({len(record['files'])} files)")
    if args.install:
        install(Path(args.out) / "build", record)
        print(f"installed into {MODELS_DIR}")
    return status


if __name__ == "__main__":
    sys.exit(main())
