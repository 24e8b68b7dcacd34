"""`python -m llava.demo.base_models.build --corpus DIR --out DIR [--budget ship|small|smoke]`: build the tiny base models.

From the synthetic corpus (`python -m llava.demo.corpus --out DIR`) this trains

- a byte-level BPE tokenizer with Llama-3 special tokens and chat template,
- a tiny Llama on text-only chat versions of the tasks (OUT/llm/, tokenizer inside),
- a tiny HuBERT-architecture encoder with CTC on the English speech (OUT/encoder/),

and writes OUT/report.json (text topline, dev CER, parameters, times). Each model directory is
written under a temporary name and renamed when complete; a finished directory built with the same
budget and seed is reused on a re-run (`--force` rebuilds it).

The text-only conversations (`chats.py`) use every task instruction of `llava/dataset/prompts.json`
in both prompt layouts, with `<audio>` replaced by what the audio says (transcript for ASR/ST,
passage for SQA): the input a perfectly aligned projector would hand the LLM. Budgets counted in
steps (`ship`, `smoke`) are deterministic: with one thread and the same library versions, a
rebuild gives bit-identical weights (`python -m llava.demo.base_models.ship`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llava.dataset.audio import AudioDecodeError, decode_audio
from llava.demo.base_models.budgets import BUDGETS, Budget
from llava.demo.base_models.encoder import EncoderTrainArgs, train_tiny_hubert_ctc
from llava.demo.base_models.llm_recipe import build_llm, llm_phases
from llava.demo.base_models.parts import (
    CorpusError,
    add_stamp,
    finished,
    install,
    staging,
    write_json,
)

logger = logging.getLogger("llava.demo.base_models.build")

SRC_LANG, TGT_LANG = "en", "de"


# ----------------------------------------------------------------------------------- corpus
def _read_table(path: Path, columns: Sequence[str]):
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found (build it with python -m llava.demo.corpus)")
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing}; found {names}")
    return pq.read_table(path, columns=list(columns))


def _mustc(corpus: Path, split: str) -> Path:
    return corpus / "MUSTC" / f"{SRC_LANG}-{TGT_LANG}" / f"{split}.parquet"


def _squad(corpus: Path, split: str) -> Path:
    return corpus / "SpokenSQuAD" / f"spoken_squad_{split}.parquet"


def read_speech(
    corpus: Path, split: str, max_rows: int | None, rng: np.random.Generator | None, skipped: dict
) -> list[tuple[np.ndarray, str]]:
    """(waveform, transcript) pairs: MuST-C English sentences, plus the Spoken-SQuAD passages for train."""
    sources = [(_mustc(corpus, split), "sentence")]
    if split == "train" and _squad(corpus, split).is_file():
        sources.append((_squad(corpus, split), "context"))
    rows: list[tuple[dict, str, str]] = []
    for path, text_col in sources:
        table = _read_table(path, ["audio", text_col])
        seen: set[str] = set()
        for audio, text in zip(table.column("audio").to_pylist(), table.column(text_col).to_pylist()):
            key = text if text_col == "context" else None  # SQA rows repeat a passage per question
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            rows.append((audio, text, str(path)))
    if max_rows is not None and len(rows) > max_rows:
        idx = rng.choice(len(rows), size=max_rows, replace=False) if rng is not None else range(max_rows)
        rows = [rows[i] for i in sorted(idx)]
    out = []
    for audio, text, path in rows:
        try:
            out.append((decode_audio(audio, target_sr=16000, base_dir=Path(path).parent), text))
        except AudioDecodeError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            logger.warning("%s: skipping a row: %s", path, exc)
    return out


# ----------------------------------------------------------------------------------- driver
def build_encoder(corpus: Path, out: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """Tiny HuBERT CTC encoder into OUT/encoder (reused when already built with the same settings)."""
    final = out / "encoder"
    if (report := finished(final, stamp)) is not None:
        logger.info("reusing %s", final)
        return report
    skipped: dict[str, int] = {}
    t0 = time.monotonic()
    train = read_speech(corpus, "train", budget.encoder_max_train, np.random.default_rng(seed), skipped)
    dev = read_speech(corpus, "dev", budget.max_dev, None, skipped)
    load_time = time.monotonic() - t0
    logger.info("decoded %d train / %d dev utterances in %.0fs", len(train), len(dev), load_time)
    with staging(out, ".encoder.") as tmp:
        report = train_tiny_hubert_ctc(
            train,
            dev,
            tmp,
            config=budget.encoder_config,
            args=EncoderTrainArgs(**{"seed": seed, "max_dev": budget.max_dev, **budget.encoder_args}),
        )
        report["decode_skipped"] = skipped
        report["audio_load_time_s"] = round(load_time, 1)
        report["build_wall_s"] = round(time.monotonic() - t0, 1)  # decoding + training + dev CER
        report = add_stamp(tmp, report, stamp)
        install(tmp, final)
    return report


def build_all(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    budget: str = "small",
    seed: int = 42,
    force: bool = False,
    parts: Sequence[str] = ("llm", "encoder"),
    seeds: Mapping[str, int] | None = None,
) -> dict:
    """Build (or reuse) OUT/llm and OUT/encoder from the corpus; write and return OUT/report.json.

    `parts` builds only some of the two (separate processes can build them side by side; a last call
    with both reuses the finished ones and writes the report). The report is written only when both
    are done. `seeds` overrides `seed` for one model (`{"llm": 44}`): the two models share no random
    state, so each one's seed can be chosen on its own.
    """
    unknown = sorted(set(parts) - {"llm", "encoder"})
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; known: ['encoder', 'llm']")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; known: {sorted(BUDGETS)}")
    corpus, out = Path(corpus), Path(out)
    for path in (_mustc(corpus, "train"), _mustc(corpus, "dev")):
        if not path.is_file():
            raise CorpusError(f"{path}: corpus file not found (build it with python -m llava.demo.corpus)")
    out.mkdir(parents=True, exist_ok=True)
    spec = BUDGETS[budget]
    part_seeds = part_seed_map(seed, seeds)
    stamps = {part: {"budget": budget, "seed": part_seeds[part], "spec": asdict(spec)} for part in part_seeds}
    if force:  # the LLM's earlier phases go with it
        llm_dirs = [name for _, name in llm_phases(spec)] if "llm" in parts else []
        for name in {*parts, *llm_dirs}:
            shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.monotonic()
    llm = build_llm(corpus, out, spec, part_seeds["llm"], stamps["llm"]) if "llm" in parts else {}
    encoder = (
        build_encoder(corpus, out, spec, part_seeds["encoder"], stamps["encoder"])
        if "encoder" in parts
        else {}
    )
    if len(set(parts)) < 2:
        return {"llm": llm, "encoder": encoder}
    report = {
        "budget": budget,
        "seed": seed,
        "seeds": part_seeds,
        "corpus": str(corpus.resolve()),
        "llm_dir": "llm",  # relative to the report, so the output directory can be moved
        "encoder_dir": "encoder",
        "llm": {k: v for k, v in llm.items() if k != "build"},
        "encoder": {k: v for k, v in encoder.items() if k != "build"},
        "summary": {
            **part_summary("llm", llm),
            **part_summary("encoder", encoder),
            "wall_time_s": round(time.monotonic() - t0, 1),
        },
    }
    write_json(out / "report.json", report)
    return report


def part_seed_map(seed: int, seeds: Mapping[str, int] | None = None) -> dict[str, int]:
    """Each model's training seed: `seed`, or its entry in `seeds`; an unknown model name is an error."""
    unknown = sorted(set(seeds or {}) - {"llm", "encoder"})
    if unknown:
        raise ValueError(f"seeds for unknown model(s) {unknown}; known: ['encoder', 'llm']")
    return {"llm": seed, "encoder": seed, **(seeds or {})}


def part_summary(part: str, report: dict) -> dict:
    """The headline figures of one model's training report (`llm` or `encoder`), as the summary keys them."""
    if part == "llm":
        return {
            "llm_params": report.get("params"),
            "llm_dev_ppl": report.get("dev_ppl"),
            "text_topline_test": report.get("text_topline_summary", {}).get("test"),
            # Repeat WER with the transcript spelled letter by letter (only with a spelled phase).
            "spelled_topline": report.get("spelled_topline"),
            "llm_train_time_s": report.get("train_time_s"),
        }
    if part == "encoder":
        return {
            "encoder_params": report.get("params_encoder"),
            "encoder_dev_cer": report.get("dev_cer"),
            "encoder_train_time_s": report.get("train_time_s"),
        }
    raise ValueError(f"unknown part {part!r}; known: ['encoder', 'llm']")


def auto_threads() -> int:
    """Intra-op threads: the cores not already busy (1-minute load average), at least one.

    On a shared machine, more compute threads than idle cores make every step wait for the slowest
    thread; one thread per idle core keeps throughput close to the best case.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.demo.base_models.build",
        description="Train the tiny tokenizer, LLM and HuBERT CTC encoder on the synthetic corpus.",
    )
    parser.add_argument(
        "--corpus", required=True, help="corpus directory (python -m llava.demo.corpus --out DIR)"
    )
    parser.add_argument(
        "--out", required=True, help="output directory: OUT/llm, OUT/encoder, OUT/report.json"
    )
    parser.add_argument(
        "--budget", default="small", choices=sorted(BUDGETS), help="compute budget (default: small)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: idle cores)")
    parser.add_argument("--force", action="store_true", help="rebuild models even if OUT holds finished ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    threads = args.threads or auto_threads()
    torch.set_num_threads(threads)
    logger.info("using %d torch thread(s)", threads)
    try:
        report = build_all(args.corpus, args.out, budget=args.budget, seed=args.seed, force=args.force)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
