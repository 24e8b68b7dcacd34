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
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llava.dataset.audio import AudioDecodeError, decode_audio
from llava.dataset.prompts import PromptBank
from llava.demo.base_models.budgets import BUDGETS, Budget
from llava.demo.base_models.chats import (
    TASKS,
    TaskText,
    conversation,
    read_task_texts,
    scrambled_items,
    spelled,
    split_task_texts,
    text_topline,
    training_conversations,
    user_turn,
)
from llava.demo.base_models.encoder import EncoderTrainArgs, train_tiny_hubert_ctc
from llava.demo.base_models.llm import LlmTrainArgs, TextExample, train_tiny_llm
from llava.demo.base_models.tokenizer import train_bpe_tokenizer
from llava.fileio import atomic_write_text, usual_mode

logger = logging.getLogger("llava.demo.base_models.build")

SRC_LANG, TGT_LANG = "en", "de"
REPORT_NAME = "train_report.json"  # written last into a model directory by its trainer


class CorpusError(ValueError):
    """A missing corpus file or column; the message names the file."""


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


# ----------------------------------------------------------------------------------- examples
def chat_plain_text(messages: list[dict[str, str]]) -> str:
    """A conversation as the text between the chat template's special tokens (tokenizer training)."""
    return "\n\n".join(f"{m['role']}\n\n{m['content'].strip()}" for m in messages) + "\n\nassistant\n\n"


def _per_task(items: list[TaskText], n: int | None) -> list[TaskText]:
    """The first `n` items of each task (all when `n` is None)."""
    if n is None:
        return list(items)
    return [it for task in TASKS for it in [x for x in items if x.task == task][:n]]


def _topline_summary(topline: dict) -> dict:
    return {
        "repeat_wer": round(topline["ASR"]["paper_wer"], 2) if "ASR" in topline else None,
        "st_bleu": round(topline["ST"]["bleu"], 2) if "ST" in topline else None,
        "sqa_f1": round(topline["SQA"]["f1"], 2) if "SQA" in topline else None,
    }


# ----------------------------------------------------------------------------------- driver
# The budget fields each model depends on: a model is reused when these (and the seed) are unchanged.
_TEXT_LLM_FIELDS = (
    "vocab_size",
    "llm_args",
    "llm_config",
    "chat_copies",
    "plain_lines",
    "scrambled",
    "task_copies",
    "stretch_frac",
    "stretch_max",
    "max_dev",
    "topline_n",
    "eval_n",
)
PART_FIELDS = {
    "llm_text": _TEXT_LLM_FIELDS,  # the first LLM phase, when a spelled phase follows it
    "llm": (*_TEXT_LLM_FIELDS, "spell_steps", "spell_args", "spell_copies", "spell_repeat"),
    "encoder": ("encoder_args", "encoder_config", "encoder_max_train", "max_dev"),
}  # fmt: skip


def _finished(model_dir: Path, stamp: dict) -> dict | None:
    """The saved report of a complete model directory built with the same settings, else None.

    Settings are the seed and the budget fields that model depends on (`PART_FIELDS`); a budget
    renamed, or differing only in the other model's fields, matches.
    """
    try:
        report = json.loads((model_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    build = report.get("build")
    if not isinstance(build, dict) or build.get("seed") != stamp.get("seed"):
        return None
    keys = PART_FIELDS[model_dir.name]
    return report if _same_spec(build.get("spec") or {}, stamp.get("spec") or {}, keys) else None


def _same_spec(saved: dict, current: dict, keys: Sequence[str]) -> bool:
    """Budget contents equal, a field missing on one side counting as its default (fields added later)."""
    defaults = {f.name: f.default for f in fields(Budget) if f.default is not MISSING}
    defaults.update({f.name: f.default_factory() for f in fields(Budget) if f.default_factory is not MISSING})
    return all(saved.get(k, defaults.get(k)) == current.get(k, defaults.get(k)) for k in keys)


@contextlib.contextmanager
def _staging(out: Path, prefix: str) -> Iterator[Path]:
    """A private temporary directory in `out` for a model being built; removed if the build fails."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=prefix))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, final: Path) -> None:
    """Move a finished temporary model directory into place (replacing an outdated one)."""
    # Temporary directories and files are created private (0700/0600); give them the usual modes.
    os.chmod(tmp, usual_mode(directory=True))
    for f in tmp.iterdir():
        os.chmod(f, usual_mode())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _add_stamp(model_dir: Path, report: dict, stamp: dict) -> dict:
    report = {"build": stamp, **report}
    _write_json(model_dir / REPORT_NAME, report)
    return report


def build_llm(corpus: Path, out: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """Tokenizer + tiny LLM into OUT/llm (reused when already built with the same settings).

    With `budget.spell_steps` the first phase goes to OUT/llm_text and the spelled phase continues it
    into OUT/llm; each phase is reused when finished with the same settings.
    """
    final = out / "llm"
    if (report := _finished(final, stamp)) is not None:
        logger.info("reusing %s", final)
        return report
    if not budget.spell_steps:
        return _build_text_llm(corpus, final, budget, seed, stamp)
    first = _build_text_llm(corpus, out / "llm_text", budget, seed, stamp)
    return _build_spelled_llm(corpus, out / "llm_text", final, budget, seed, stamp, first)


def _spelled_topline(model, tokenizer, items: Sequence[TaskText], prompts: PromptBank, seed: int) -> float:
    """Repeat WER (paper) with each ASR item's transcript spelled (chats.spelled, fixed draws)."""
    rng = np.random.default_rng([seed, 7])
    asr = [spelled(it, rng) for it in items if it.task == "ASR"]
    return round(float(text_topline(model, tokenizer, asr, prompts)["ASR"]["paper_wer"]), 2)


def _dev_sets(corpus: Path, budget: Budget, prompts: PromptBank) -> tuple[list[TextExample], list[TaskText]]:
    """Dev conversations scored for the dev loss, and the dev items whose topline is logged in training."""
    dev_items = split_task_texts(corpus, "dev")
    dev_examples: list[TextExample] = [
        conversation(it, user_turn(it, "original", prompts), True)
        for it in _per_task(dev_items, budget.max_dev)
    ]
    return dev_examples, _per_task(dev_items, budget.eval_n)


def _saved_toplines(
    model_dir: Path, corpus: Path, budget: Budget, prompts: PromptBank, spelled_seed: int | None
) -> dict:
    """Toplines of the saved model directory, loaded the way the pipeline loads it: the text topline per
    split (and its summary) and, with `spelled_seed`, the spelled-transcript repeat WER per split."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    items = {split: _per_task(split_task_texts(corpus, split), budget.topline_n) for split in ("dev", "test")}
    out: dict = {"text_topline": {k: text_topline(model, tokenizer, v, prompts) for k, v in items.items()}}
    out["text_topline_summary"] = {k: _topline_summary(v) for k, v in out["text_topline"].items()}
    if spelled_seed is not None:
        out["spelled_topline"] = {
            k: {"repeat_wer": _spelled_topline(model, tokenizer, v, prompts, spelled_seed)}
            for k, v in items.items()
        }
    return out


def _build_spelled_llm(
    corpus: Path, first_dir: Path, final: Path, budget: Budget, seed: int, stamp: dict, first: dict
) -> dict:
    """The spelled phase: continue the first-phase LLM in `first_dir` into `final`."""
    from transformers import AutoTokenizer

    wall0 = time.monotonic()
    out = final.parent
    rng = np.random.default_rng([seed, 2])
    prompts = PromptBank.load()
    items = read_task_texts(corpus / "text" / "lm_tasks.jsonl")
    extra = [it for it in items for _ in range(budget.task_copies.get(it.task, 0))]
    spelled_items = [
        spelled(it, rng, budget.spell_repeat)
        for it in items
        if it.task in ("ASR", "ST")
        for _ in range(budget.spell_copies)
    ]
    conversations = training_conversations(spelled_items, prompts, rng, copies=1) + training_conversations(
        items + extra,
        prompts,
        rng,
        copies=1,
        stretch_frac=budget.stretch_frac,
        stretch_max=budget.stretch_max,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(first_dir))
    dev_examples, logged = _dev_sets(corpus, budget, prompts)

    def evaluate(model) -> dict:
        summary = _topline_summary(text_topline(model, tokenizer, logged, prompts))
        return {**summary, "spelled_repeat_wer": _spelled_topline(model, tokenizer, logged, prompts, seed)}

    with _staging(out, ".llm.") as tmp:
        report = train_tiny_llm(
            conversations,
            dev_examples,
            tokenizer,
            tmp,
            args=LlmTrainArgs(
                **{"seed": seed, **budget.llm_args, "max_steps": budget.spell_steps, **budget.spell_args}
            ),
            evaluate=evaluate,
            resume_dir=out / ".llm_spelled.resume",
            init_from=first_dir,
        )
        # The first phase's tokenizer files as they are (a re-save adds loader settings to its config).
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (first_dir / name).is_file():
                shutil.copyfile(first_dir / name, tmp / name)
        report.update(_saved_toplines(tmp, corpus, budget, prompts, spelled_seed=seed))
        report["first_phase"] = {
            "train_time_s": first.get("train_time_s"),
            "steps": first.get("steps"),
            "text_topline_summary": first.get("text_topline_summary"),
        }
        report["tokenizer_vocab_size"] = len(tokenizer)
        # Both phases, as a build from scratch spends them (the first may have been reused here).
        report["spelled_phase_wall_s"] = round(time.monotonic() - wall0, 1)
        report["build_wall_s"] = round(report["spelled_phase_wall_s"] + (first.get("build_wall_s") or 0.0), 1)
        report["train_examples"] = {"spelled": len(spelled_items), "rehearsed": len(items) + len(extra)}
        report = _add_stamp(tmp, report, stamp)
        _install(tmp, final)
    return report


def _build_text_llm(corpus: Path, final: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """The first (or only) LLM phase: tokenizer + tiny LLM trained from scratch into `final`."""
    if (report := _finished(final, stamp)) is not None:
        logger.info("reusing %s", final)
        return report
    out = final.parent
    wall0 = time.monotonic()
    rng = np.random.default_rng(seed)
    prompts = PromptBank.load()
    tasks_file = corpus / "text" / "lm_tasks.jsonl"
    lm_file = corpus / "text" / "lm_corpus.txt"
    for path in (tasks_file, lm_file):
        if not path.is_file():
            raise CorpusError(
                f"{path}: corpus file not found (rebuild the corpus with python -m llava.demo.corpus)"
            )
    items = read_task_texts(tasks_file)
    if budget.scrambled:
        items = items + scrambled_items(items, rng, budget.scrambled)
    extra = [it for it in items for _ in range(budget.task_copies.get(it.task, 0))]
    conversations = training_conversations(
        items + extra,
        prompts,
        rng,
        copies=budget.chat_copies,
        stretch_frac=budget.stretch_frac,
        stretch_max=budget.stretch_max,
    )
    lines = [ln.strip() for ln in lm_file.read_text(encoding="utf-8").splitlines() if ln.strip()]

    t0 = time.monotonic()
    # One rendering per item is enough for the merges; the copies only repeat the same words.
    tokenizer = train_bpe_tokenizer(
        lines + [chat_plain_text(c) for c in conversations[: len(items)]], vocab_size=budget.vocab_size
    )
    tok_time = time.monotonic() - t0
    plain = [lines[i] for i in rng.choice(len(lines), min(budget.plain_lines, len(lines)), replace=False)]
    train_examples: list[TextExample] = [*plain, *conversations]
    dev_examples, logged = _dev_sets(corpus, budget, prompts)

    def evaluate(model) -> dict:
        return _topline_summary(text_topline(model, tokenizer, logged, prompts))

    with _staging(out, ".llm.") as tmp:
        report = train_tiny_llm(
            train_examples,
            dev_examples,
            tokenizer,
            tmp,
            config=budget.llm_config,
            args=LlmTrainArgs(**{"seed": seed, **budget.llm_args}),
            evaluate=evaluate,
            resume_dir=out / ".llm.resume",  # survives a killed build: the next one continues from it
        )
        report.update(_saved_toplines(tmp, corpus, budget, prompts, spelled_seed=None))
        report["tokenizer_vocab_size"] = len(tokenizer)
        report["tokenizer_time_s"] = round(tok_time, 1)
        report["build_wall_s"] = round(time.monotonic() - wall0, 1)  # tokenizer + training + topline
        report["train_examples"] = {
            "plain": len(plain),
            **{
                t: sum(1 + budget.task_copies.get(t, 0) for it in items if it.task == t) * budget.chat_copies
                for t in TASKS
            },
        }
        report = _add_stamp(tmp, report, stamp)
        _install(tmp, final)
    return report


def build_encoder(corpus: Path, out: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """Tiny HuBERT CTC encoder into OUT/encoder (reused when already built with the same settings)."""
    final = out / "encoder"
    if (report := _finished(final, stamp)) is not None:
        logger.info("reusing %s", final)
        return report
    skipped: dict[str, int] = {}
    t0 = time.monotonic()
    train = read_speech(corpus, "train", budget.encoder_max_train, np.random.default_rng(seed), skipped)
    dev = read_speech(corpus, "dev", budget.max_dev, None, skipped)
    load_time = time.monotonic() - t0
    logger.info("decoded %d train / %d dev utterances in %.0fs", len(train), len(dev), load_time)
    with _staging(out, ".encoder.") as tmp:
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
        report = _add_stamp(tmp, report, stamp)
        _install(tmp, final)
    return report


def build_all(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    budget: str = "small",
    seed: int = 42,
    force: bool = False,
    parts: Sequence[str] = ("llm", "encoder"),
) -> dict:
    """Build (or reuse) OUT/llm and OUT/encoder from the corpus; write and return OUT/report.json.

    `parts` builds only some of the two (separate processes can build them side by side; a last call
    with both reuses the finished ones and writes the report). The report is written only when both
    are done.
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
    stamp = {"budget": budget, "seed": seed, "spec": asdict(spec)}
    if force:  # the LLM's first phase (llm_text) goes with it
        for name in [*parts, *(["llm_text"] if "llm" in parts else [])]:
            shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.monotonic()
    llm = build_llm(corpus, out, spec, seed, stamp) if "llm" in parts else {}
    encoder = build_encoder(corpus, out, spec, seed, stamp) if "encoder" in parts else {}
    if len(set(parts)) < 2:
        return {"llm": llm, "encoder": encoder}
    report = {
        "budget": budget,
        "seed": seed,
        "corpus": str(corpus.resolve()),
        "llm_dir": "llm",  # relative to the report, so the output directory can be moved
        "encoder_dir": "encoder",
        "llm": {k: v for k, v in llm.items() if k != "build"},
        "encoder": {k: v for k, v in encoder.items() if k != "build"},
        "summary": {
            "llm_params": llm.get("params"),
            "llm_dev_ppl": llm.get("dev_ppl"),
            "text_topline_test": llm.get("text_topline_summary", {}).get("test"),
            # Repeat WER with the transcript spelled letter by letter (only with a spelled phase).
            "spelled_topline": llm.get("spelled_topline"),
            "llm_train_time_s": llm.get("train_time_s"),
            "encoder_params": encoder.get("params_encoder"),
            "encoder_dev_cer": encoder.get("dev_cer"),
            "encoder_train_time_s": encoder.get("train_time_s"),
            "wall_time_s": round(time.monotonic() - t0, 1),
        },
    }
    _write_json(out / "report.json", report)
    return report


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
