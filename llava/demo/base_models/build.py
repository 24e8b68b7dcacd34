"""`python -m llava.demo.base_models.build --corpus DIR --out DIR [--budget small|smoke]`: build the tiny base models.

From the synthetic corpus (`python -m llava.demo.corpus --out DIR`) this trains

- a byte-level BPE tokenizer with Llama-3 special tokens and chat template,
- a tiny Llama on the corpus text and text-only chat versions of the tasks (OUT/llm/, tokenizer inside),
- a tiny HuBERT-architecture encoder with CTC on the English speech (OUT/encoder/),

and writes OUT/report.json (dev perplexity, dev CER, parameters, times). Each model directory is
written under a temporary name and renamed when complete; a finished directory built with the same
budget and seed is reused on a re-run (`--force` rebuilds it).

The text-only chat examples use the task prompts of `llava/dataset/prompts.json` with the `<audio>`
placeholder replaced by what the audio says (transcript for ASR/ST, passage for SQA): the input a
perfectly aligned projector would hand the LLM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from llava.constants import AUDIO_TOKEN
from llava.dataset.audio import AudioDecodeError, decode_audio
from llava.dataset.prompts import PromptBank
from llava.demo.base_models.encoder import EncoderTrainArgs, train_tiny_hubert_ctc
from llava.demo.base_models.llm import LlmTrainArgs, TextExample, generate_replies, train_tiny_llm
from llava.demo.base_models.tokenizer import train_bpe_tokenizer

logger = logging.getLogger("llava.demo.base_models.build")

SRC_LANG, TGT_LANG = "en", "de"
REPORT_NAME = "train_report.json"  # written last into a model directory by its trainer


class CorpusError(ValueError):
    """A missing corpus file or column; the message names the file."""


@dataclass(frozen=True)
class Budget:
    """How much compute one `--budget` spends."""

    vocab_size: int  # BPE vocabulary (bytes and special tokens included)
    llm_args: dict  # `LlmTrainArgs` fields (time_budget_s, batch_size, ...)
    encoder_args: dict  # `EncoderTrainArgs` fields
    llm_config: dict = field(default_factory=dict)  # overrides of `default_llm_config`
    encoder_config: dict = field(default_factory=dict)  # overrides of `default_encoder_config`
    chat_copies: int = 2  # each training row becomes this many conversations (different prompts)
    encoder_max_train: int | None = None  # training utterances used (None: all)
    max_dev: int = 200  # dev utterances / sentence pairs scored
    generation_dev: int = 40  # dev conversations per task answered greedily for the report


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        vocab_size=800,
        llm_args=dict(time_budget_s=10.0, batch_size=8),
        encoder_args=dict(time_budget_s=15.0),
        llm_config=dict(hidden_size=64, num_hidden_layers=2, intermediate_size=256),
        encoder_config=dict(hidden_size=128, num_hidden_layers=2, intermediate_size=512),
        chat_copies=1,
        encoder_max_train=300,
        max_dev=30,
        generation_dev=8,
    ),
    "small": Budget(
        vocab_size=2000,
        llm_args=dict(time_budget_s=120.0),
        encoder_args=dict(time_budget_s=300.0),
    ),
}


# ----------------------------------------------------------------------------------- corpus
@dataclass
class TextCorpus:
    """Texts of one split: plain lines and structured task rows (no audio)."""

    lines: list[str]  # plain text lines
    pairs: list[tuple[str, str]]  # (English sentence, German translation)
    sqa: list[tuple[str, str, str]]  # (passage, question without <audio>, answer)


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


def read_texts(corpus: Path, split: str) -> TextCorpus:
    """Sentence pairs and SQA rows of `split`; for `train` also the LM text lines."""
    table = _read_table(_mustc(corpus, split), ["sentence", "translation"])
    pairs = [
        (s.strip(), t.strip()) for s, t in zip(*(table.column(c).to_pylist() for c in table.column_names))
    ]
    sqa: list[tuple[str, str, str]] = []
    if _squad(corpus, split).is_file():
        t = _read_table(_squad(corpus, split), ["context", "question", "answer"])
        for ctx, q, a in zip(*(t.column(c).to_pylist() for c in t.column_names)):
            sqa.append((ctx.strip(), q.replace(AUDIO_TOKEN, "").strip(), a.strip()))
    else:
        logger.warning("%s not found: the LLM gets no question-answering examples", _squad(corpus, split))
    lines: list[str] = []
    if split == "train":
        lm = corpus / "text" / "lm_corpus.txt"
        if lm.is_file():
            lines = [ln.strip() for ln in lm.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            logger.warning("%s not found: the LLM learns from the task texts only", lm)
            lines = [x for p in pairs for x in p] + [x for row in sqa for x in row]
    else:
        lines = [x for p in pairs for x in p] + sorted({ctx for ctx, _, _ in sqa})
    return TextCorpus(lines, pairs, sqa)


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
def _fill(prompt: str, content: str) -> str:
    return prompt.replace(AUDIO_TOKEN, content)


def chat_examples(
    texts: TextCorpus, prompts: PromptBank, rng: np.random.Generator | None
) -> dict[str, list[list[dict[str, str]]]]:
    """Text-only task conversations per task; `rng=None` takes the first prompt (as evaluation does)."""

    def pick(options: list[str]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    asr = prompts.candidates("ASR", source_language=SRC_LANG)
    st = prompts.candidates("ST", source_language=SRC_LANG, target_language=TGT_LANG)
    out: dict[str, list[list[dict[str, str]]]] = {"ASR": [], "ST": [], "SQA": []}
    for en, de in texts.pairs:
        out["ASR"].append(
            [{"role": "user", "content": _fill(pick(asr), en)}, {"role": "assistant", "content": en}]
        )
        out["ST"].append(
            [{"role": "user", "content": _fill(pick(st), en)}, {"role": "assistant", "content": de}]
        )
    for ctx, question, answer in texts.sqa:
        sqa = prompts.candidates("SQA", source_language=SRC_LANG, question=question)
        out["SQA"].append(
            [{"role": "user", "content": _fill(pick(sqa), ctx)}, {"role": "assistant", "content": answer}]
        )
    return out


def chat_plain_text(messages: list[dict[str, str]]) -> str:
    """A conversation as the text between the chat template's special tokens (tokenizer training)."""
    return "\n\n".join(f"{m['role']}\n\n{m['content'].strip()}" for m in messages) + "\n\nassistant\n\n"


def _normalize_answer(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def generation_scores(model, tokenizer, conversations: dict[str, list], n: int) -> dict:
    """Exact match (SQuAD normalisation) of greedy replies to the first `n` dev conversations per task."""
    scores = {}
    for task, convs in conversations.items():
        convs = convs[:n]
        if not convs:
            continue
        replies = generate_replies(model, tokenizer, [c[:-1] for c in convs], max_new_tokens=64)
        refs = [c[-1]["content"] for c in convs]
        em = np.mean([_normalize_answer(h) == _normalize_answer(r) for h, r in zip(replies, refs)])
        scores[task] = {
            "exact_match": float(em),
            "n": len(convs),
            "example": {"prompt": convs[0][0]["content"], "ref": refs[0], "hyp": replies[0]},
        }
    return scores


# ----------------------------------------------------------------------------------- driver
def _finished(model_dir: Path, stamp: dict) -> dict | None:
    """The saved report of a complete model directory built with the same settings, else None."""
    try:
        report = json.loads((model_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("build") == stamp else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _install(tmp: Path, final: Path) -> None:
    """Move a finished temporary model directory into place (replacing an outdated one)."""
    # Temporary directories and files are created private (0700/0600); give them the usual modes.
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~mask)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _add_stamp(model_dir: Path, report: dict, stamp: dict) -> dict:
    report = {"build": stamp, **report}
    _write_json(model_dir / REPORT_NAME, report)
    return report


def build_llm(corpus: Path, out: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """Tokenizer + tiny LLM into OUT/llm (reused when already built with the same settings)."""
    final = out / "llm"
    if (report := _finished(final, stamp)) is not None:
        logger.info("reusing %s", final)
        return report
    rng = np.random.default_rng(seed)
    prompts = PromptBank.load()
    train_texts, dev_texts = read_texts(corpus, "train"), read_texts(corpus, "dev")
    train_chats: dict[str, list] = {}
    for _ in range(budget.chat_copies):
        for task, convs in chat_examples(train_texts, prompts, rng).items():
            train_chats.setdefault(task, []).extend(convs)
    dev_chats = chat_examples(dev_texts, prompts, None)
    all_train_chats = [c for convs in train_chats.values() for c in convs]

    t0 = time.monotonic()
    tokenizer = train_bpe_tokenizer(
        train_texts.lines + [chat_plain_text(c) for c in all_train_chats], vocab_size=budget.vocab_size
    )
    tok_time = time.monotonic() - t0
    train_examples: list[TextExample] = [*train_texts.lines, *all_train_chats]
    dev_examples: list[TextExample] = [*dev_texts.lines, *(c for convs in dev_chats.values() for c in convs)]
    dev_examples = dev_examples[: budget.max_dev * 4]  # ~4 texts per sentence pair (plain + chats)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".llm."))
    try:
        report = train_tiny_llm(
            train_examples,
            dev_examples,
            tokenizer,
            tmp,
            config=budget.llm_config,
            args=LlmTrainArgs(**{"seed": seed, **budget.llm_args}),
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Score the saved directory, loaded the way the pipeline loads it.
        model = AutoModelForCausalLM.from_pretrained(str(tmp))
        reloaded = AutoTokenizer.from_pretrained(str(tmp))
        report["dev_generation"] = generation_scores(model, reloaded, dev_chats, budget.generation_dev)
        report["tokenizer_vocab_size"] = len(tokenizer)
        report["tokenizer_time_s"] = round(tok_time, 1)
        report["train_examples"] = {
            "plain": len(train_texts.lines),
            **{k: len(v) for k, v in train_chats.items()},
        }
        report = _add_stamp(tmp, report, stamp)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".encoder."))
    try:
        report = train_tiny_hubert_ctc(
            train,
            dev,
            tmp,
            config=budget.encoder_config,
            args=EncoderTrainArgs(**{"seed": seed, "max_dev": budget.max_dev, **budget.encoder_args}),
        )
        report["decode_skipped"] = skipped
        report["audio_load_time_s"] = round(load_time, 1)
        report = _add_stamp(tmp, report, stamp)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def build_all(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    budget: str = "small",
    seed: int = 42,
    force: bool = False,
) -> dict:
    """Build (or reuse) OUT/llm and OUT/encoder from the corpus; write and return OUT/report.json."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; known: {sorted(BUDGETS)}")
    corpus, out = Path(corpus), Path(out)
    for path in (_mustc(corpus, "train"), _mustc(corpus, "dev")):
        if not path.is_file():
            raise CorpusError(f"{path}: corpus file not found (build it with python -m llava.demo.corpus)")
    out.mkdir(parents=True, exist_ok=True)
    spec = BUDGETS[budget]
    stamp = {"budget": budget, "seed": seed, "spec": asdict(spec)}
    if force:
        for name in ("llm", "encoder"):
            shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.monotonic()
    llm = build_llm(corpus, out, spec, seed, stamp)
    encoder = build_encoder(corpus, out, spec, seed, stamp)
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
