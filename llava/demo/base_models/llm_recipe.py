"""The tiny LLM's recipe: a tokenizer and up to three training phases, each continuing the one before.

1. text (`llm_text`): the tokenizer, then a Llama trained from scratch on plain LM lines and text-only
   chat versions of the tasks (`chats.training_conversations`, the gold text in place of the audio);
2. spelled (`llm_spelled`, with `Budget.spell_steps`): ASR and ST inputs spelled letter by letter
   (`chats.spelled`), the form in which a projector can pass on what the character-CTC encoder hears,
   with the first phase's conversations rehearsed;
3. passages (with `Budget.passage_steps`): the SQA passages spelled too, in blocks long enough for a
   passage at the projector's rate.

The last phase is saved as `llm`. Each phase directory is stamped with the budget and seed
(`parts.add_stamp`); a rebuild continues from the latest phase finished with the same settings.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llava.dataset.prompts import PromptBank
from llava.demo.base_models.budgets import Budget
from llava.demo.base_models.chats import (
    TASKS,
    TaskText,
    conversation,
    passage_sentence_items,
    read_task_texts,
    scrambled_items,
    spelled,
    split_task_texts,
    text_topline,
    training_conversations,
    user_turn,
)
from llava.demo.base_models.llm import LlmTrainArgs, TextExample, train_tiny_llm
from llava.demo.base_models.parts import CorpusError, add_stamp, finished, install, staging
from llava.demo.base_models.tokenizer import train_bpe_tokenizer

logger = logging.getLogger("llava.demo.base_models.llm_recipe")

# Directory of each phase when a later phase follows it (the last one is always `llm`).
_PHASE_DIRS = {"text": "llm_text", "spelled": "llm_spelled", "passages": "llm_passages"}


def llm_phases(budget: Budget) -> list[tuple[str, str]]:
    """(phase, directory name) of each LLM phase of `budget`, in training order."""
    kinds = (
        ["text"]
        + (["spelled"] if budget.spell_steps else [])
        + (["passages"] if budget.passage_steps else [])
    )
    return [(k, _PHASE_DIRS[k]) for k in kinds[:-1]] + [(kinds[-1], "llm")]


def build_llm(corpus: Path, out: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """Tokenizer + tiny LLM into OUT/llm, earlier phases into their own directories (`llm_phases`).

    Training continues from the latest phase already finished with the same settings; a finished
    OUT/llm is returned as it is.
    """
    phases = llm_phases(budget)
    start, report = 0, None
    for i in reversed(range(len(phases))):
        if (report := finished(out / phases[i][1], stamp)) is not None:
            logger.info("reusing %s", out / phases[i][1])
            start = i + 1
            break
    for i in range(start, len(phases)):
        kind, name = phases[i]
        if kind == "text":
            report = _build_text_llm(corpus, out / name, budget, seed, stamp)
        else:
            report = _build_spelled_llm(
                corpus, out / phases[i - 1][1], out / name, budget, seed, stamp, report, kind
            )
    return report


# ----------------------------------------------------------------------------------- toplines
def chat_plain_text(messages: list[dict[str, str]]) -> str:
    """A conversation as the text between the chat template's special tokens (tokenizer training)."""
    return "\n\n".join(f"{m['role']}\n\n{m['content'].strip()}" for m in messages) + "\n\nassistant\n\n"


def per_task(items: list[TaskText], n: int | None) -> list[TaskText]:
    """The first `n` items of each task (all when `n` is None)."""
    if n is None:
        return list(items)
    return [it for task in TASKS for it in [x for x in items if x.task == task][:n]]


def topline_summary(topline: dict) -> dict:
    """Repeat WER (paper), BLEU and SQA F1 of a `chats.text_topline` result (None for a missing task)."""
    return {
        "repeat_wer": round(topline["ASR"]["paper_wer"], 2) if "ASR" in topline else None,
        "st_bleu": round(topline["ST"]["bleu"], 2) if "ST" in topline else None,
        "sqa_f1": round(topline["SQA"]["f1"], 2) if "SQA" in topline else None,
    }


def spelled_topline(model, tokenizer, items: Sequence[TaskText], prompts: PromptBank, seed: int) -> dict:
    """`topline_summary` with every input (transcript or passage) spelled (chats.spelled, fixed draws)."""
    rng = np.random.default_rng([seed, 7])
    return topline_summary(text_topline(model, tokenizer, [spelled(it, rng) for it in items], prompts))


def _dev_sets(corpus: Path, budget: Budget, prompts: PromptBank) -> tuple[list[TextExample], list[TaskText]]:
    """Dev conversations scored for the dev loss, and the dev items whose topline is logged in training."""
    dev_items = split_task_texts(corpus, "dev")
    dev_examples: list[TextExample] = [
        conversation(it, user_turn(it, "original", prompts), True)
        for it in per_task(dev_items, budget.max_dev)
    ]
    return dev_examples, per_task(dev_items, budget.eval_n)


def saved_toplines(
    model_dir: str | Path,
    corpus: str | Path,
    per_split: int | None,
    spelled_seed: int | None,
    splits: Sequence[str] = ("dev", "test"),
    prompts: PromptBank | None = None,
) -> dict:
    """Toplines of a saved LLM directory, loaded the way the pipeline loads it: the text topline per
    split (`per_split` items per task, None: all) and its summary and, with `spelled_seed`, the
    spelled-input topline summary per split."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = prompts or PromptBank.load()
    items = {split: per_task(split_task_texts(Path(corpus), split), per_split) for split in splits}
    out: dict = {"text_topline": {k: text_topline(model, tokenizer, v, prompts) for k, v in items.items()}}
    out["text_topline_summary"] = {k: topline_summary(v) for k, v in out["text_topline"].items()}
    if spelled_seed is not None:
        out["spelled_topline"] = {
            k: spelled_topline(model, tokenizer, v, prompts, spelled_seed) for k, v in items.items()
        }
    return out


# ----------------------------------------------------------------------------------- phases
def _build_text_llm(corpus: Path, final: Path, budget: Budget, seed: int, stamp: dict) -> dict:
    """The first phase: tokenizer + tiny LLM trained from scratch into `final`."""
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
    if budget.passage_sentences:
        items = items + passage_sentence_items(items, budget.passage_sentences, budget.passage_openings_only)
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
        return topline_summary(text_topline(model, tokenizer, logged, prompts))

    with staging(out, ".llm.") as tmp:
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
        report.update(saved_toplines(tmp, corpus, budget.topline_n, None, prompts=prompts))
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
        report = add_stamp(tmp, report, stamp)
        install(tmp, final)
    return report


def _build_spelled_llm(
    corpus: Path,
    previous_dir: Path,
    final: Path,
    budget: Budget,
    seed: int,
    stamp: dict,
    previous: dict,
    kind: str,
) -> dict:
    """A spelled phase (`kind` "spelled" or "passages"): continue the LLM in `previous_dir` into `final`.

    Both spell every ASR/ST item `spell_copies` times; the passage phase also spells each SQA passage
    `passage_copies` times. One conversation per first-phase item is mixed in, so the earlier skills
    are rehearsed.
    """
    from transformers import AutoTokenizer

    if kind == "spelled":
        steps, phase_args, stream, passage_copies = budget.spell_steps, budget.spell_args, 2, 0
    elif kind == "passages":
        steps, phase_args, stream, passage_copies = (
            budget.passage_steps,
            budget.passage_args,
            3,
            budget.passage_copies,
        )
    else:
        raise ValueError(f"unknown LLM phase {kind!r}; known: ['passages', 'spelled']")
    wall0 = time.monotonic()
    out = final.parent
    # Each phase draws from its own stream: adding a later phase leaves the earlier ones' bytes as they are.
    rng = np.random.default_rng([seed, stream])
    prompts = PromptBank.load()
    items = read_task_texts(corpus / "text" / "lm_tasks.jsonl")
    extra = [it for it in items for _ in range(budget.task_copies.get(it.task, 0))]
    spelled_items = [
        spelled(it, rng, budget.spell_repeat)
        for it in items
        if it.task in ("ASR", "ST")
        for _ in range(budget.spell_copies)
    ]
    spelled_items += [
        spelled(it, rng, budget.spell_repeat)
        for it in items
        if it.task == "SQA"
        for _ in range(passage_copies)
    ]
    rehearsed = items + extra
    if budget.passage_sentences:
        rehearsed = rehearsed + passage_sentence_items(
            items, budget.passage_sentences, budget.passage_openings_only
        )
    conversations = training_conversations(spelled_items, prompts, rng, copies=1) + training_conversations(
        rehearsed,
        prompts,
        rng,
        copies=1,
        stretch_frac=budget.stretch_frac,
        stretch_max=budget.stretch_max,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(previous_dir))
    dev_examples, logged = _dev_sets(corpus, budget, prompts)

    def evaluate(model) -> dict:
        summary = topline_summary(text_topline(model, tokenizer, logged, prompts))
        spelled_summary = spelled_topline(model, tokenizer, logged, prompts, seed)
        return {**summary, **{f"spelled_{k}": v for k, v in spelled_summary.items()}}

    with staging(out, ".llm.") as tmp:
        report = train_tiny_llm(
            conversations,
            dev_examples,
            tokenizer,
            tmp,
            args=LlmTrainArgs(**{"seed": seed, **budget.llm_args, "max_steps": steps, **phase_args}),
            evaluate=evaluate,
            resume_dir=out / f".llm_{kind}.resume",
            init_from=previous_dir,
        )
        # The first phase's tokenizer files as they are (a re-save adds loader settings to its config).
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (previous_dir / name).is_file():
                shutil.copyfile(previous_dir / name, tmp / name)
        report.update(saved_toplines(tmp, corpus, budget.topline_n, seed, prompts=prompts))
        report["phase"] = kind
        report["previous_phase"] = {
            "train_time_s": previous.get("train_time_s"),
            "steps": previous.get("steps"),
            "text_topline_summary": previous.get("text_topline_summary"),
            "spelled_topline": previous.get("spelled_topline"),
        }
        report["tokenizer_vocab_size"] = len(tokenizer)
        # All phases, as a build from scratch spends them (earlier ones may have been reused here).
        report["phase_wall_s"] = round(time.monotonic() - wall0, 1)
        report["build_wall_s"] = round(report["phase_wall_s"] + (previous.get("build_wall_s") or 0.0), 1)
        report["train_examples"] = {"spelled": len(spelled_items), "rehearsed": len(items) + len(extra)}
        report = add_stamp(tmp, report, stamp)
        install(tmp, final)
    return report
