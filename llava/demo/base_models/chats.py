"""Text-only task conversations for the tiny LLM, and its text topline.

The tiny LLM plays the part Llama-3.1-8B-Instruct plays in the paper: it must already do the text
versions of the tasks (repeat/transcribe, translate en->de, answer a question about a passage) so
that the speech study measures alignment, not the LLM's ignorance. Its training conversations are
the task prompts with `<audio>` replaced by what the audio says (the transcript, or the SQA passage):
the input a perfectly aligned projector would hand it.

To stay robust to the prompt the study uses, training draws every instruction of
`llava/dataset/prompts.json` in both layouts:

- "original" (the paper's): user turn `<audio>\\n{instruction}` (SQA `<audio>\\n{instruction} {question}`)
  after the fixed system turn `SYSTEM_PROMPT`;
- "instruction_first": the prompts.json text with the audio where it puts it (appended after the
  instruction when the text has no `<audio>`), with or without the system turn.

The topline (`text_topline`) is measured like the study measures speech: the paper's layout, the
system turn and one fixed instruction per task (the first of prompts.json), scored with the
evaluation's own metrics (paper WER, sacreBLEU, SQuAD F1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava.constants import AUDIO_TOKEN
from llava.dataset.prompts import PromptBank, language_name

SRC_LANG, TGT_LANG = "en", "de"
# The paper's system turn (the original repo's `conv_llama_3_1`).
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LAYOUTS = ("original", "instruction_first")
TASKS = ("ASR", "ST", "SQA")

Message = dict[str, str]


@dataclass(frozen=True)
class TaskText:
    """One text-only task item: what the audio would say, the question (SQA) and the answer."""

    task: str  # ASR | ST | SQA
    content: str  # transcript (ASR/ST) or passage (SQA): what replaces <audio>
    target: str
    question: str | None = None


def read_task_texts(path: str | Path) -> list[TaskText]:
    """Task items of a corpus's `text/lm_tasks.jsonl`: ASR + ST per sentence pair, SQA per question."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (rebuild the corpus with python -m llava.demo.corpus)")
    items: list[TaskText] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("kind") == "pair":
            items.append(TaskText("ASR", rec["en"], rec["en"]))
            items.append(TaskText("ST", rec["en"], rec["de"]))
        elif rec.get("kind") == "passage":
            for question, answer in rec["qas"]:
                items.append(TaskText("SQA", rec["context"], answer, question))
        else:
            raise ValueError(f"{path}:{n}: unknown record kind {rec.get('kind')!r} (expected pair|passage)")
    return items


def instructions(prompts: PromptBank, task: str) -> list[str]:
    """The instruction texts of `task` without placeholders for the audio or the question."""
    texts = prompts.table[task].get(SRC_LANG) or next(iter(prompts.table[task].values()))
    out = []
    for text in texts:
        text = text.replace("{source_language}", language_name(SRC_LANG))
        text = text.replace("{target_language}", language_name(TGT_LANG))
        text = text.replace(AUDIO_TOKEN, "").replace("{question}", "")
        out.append(" ".join(text.split()))
    return out


def user_turn(item: TaskText, layout: str, prompts: PromptBank, choice: int | None = None) -> str:
    """The user turn of `item` in `layout`, with instruction number `choice` (None: the first)."""
    i = choice or 0
    if layout == "original":
        instruction = instructions(prompts, item.task)[i]
        if item.task == "SQA":
            return f"{item.content}\n{instruction} {item.question}"
        return f"{item.content}\n{instruction}"
    if layout == "instruction_first":
        options = prompts.candidates(
            item.task, source_language=SRC_LANG, target_language=TGT_LANG, question=item.question
        )
        return options[i].replace(AUDIO_TOKEN, item.content)
    raise ValueError(f"unknown prompt layout {layout!r}; known: {list(LAYOUTS)}")


def conversation(item: TaskText, user: str, system: bool) -> list[Message]:
    """Chat-template messages: optional system turn, the user turn, the gold reply."""
    turns = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": item.target}]


def scrambled_items(items: Sequence[TaskText], rng: np.random.Generator, per_item: int = 1) -> list[TaskText]:
    """Repeat items whose words are shuffled: `per_item` per ASR item, each its own permutation.

    A grammatical sentence can be partly guessed without reading it; a shuffled one can only be
    copied. These items make copying the one way to lower the loss, which is what the speech task
    needs too (transcribe what is heard, not a likely sentence).
    """
    out = []
    for item in items:
        if item.task != "ASR":
            continue
        words = item.content.split()
        for _ in range(per_item):
            text = " ".join(words[i] for i in rng.permutation(len(words)))
            out.append(TaskText("ASR", text, text))
    return out


def passage_sentence_items(
    items: Sequence[TaskText], per_sentence: int = 1, openings_only: bool = False
) -> list[TaskText]:
    """Repeat items made of the sentences of the SQA passages: `per_sentence` per distinct sentence.

    Passages are read whole, and their sentences open with the same templates as many a transcript
    ("Karl works as a driver in Paris."); without these items the LLM, asked to repeat a short
    sentence that opens like a passage, may go on with a passage instead of stopping. With
    `openings_only`, only each passage's first sentence is used (the one a runaway reply starts from;
    about a quarter as many items, so less copying competes with answering).
    """
    seen: dict[str, None] = {}
    for item in items:
        if item.task == "SQA":
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", item.content.strip()) if s]
            for sentence in sentences[:1] if openings_only else sentences:
                seen.setdefault(sentence, None)
    return [TaskText("ASR", s, s) for s in seen for _ in range(per_sentence)]


def stretched(item: TaskText, rng: np.random.Generator, max_repeat: int) -> TaskText:
    """`item` with every word of its content repeated 1..`max_repeat` times (uniformly); target unchanged.

    A projector emits about 12 positions per second of speech (4 per 0.333 s window), three or more per
    spoken word, and a large LLM reads such a slowed-down input without trouble. A 1 M-parameter LLM
    trained on text alone copies it literally ("the the famous famous farmer"); conversations whose
    input is stretched teach it to read at speech rate, as the study needs.
    """
    words = item.content.split()
    reps = rng.integers(1, max_repeat + 1, size=len(words))
    text = " ".join(w for w, r in zip(words, reps) for _ in range(int(r)))
    return TaskText(item.task, text, item.target, item.question)


WORD_SEPARATOR = "|"  # between spelled words, as in the character CTC vocabulary


def spelled(item: TaskText, rng: np.random.Generator, repeat_p: float = 0.3) -> TaskText:
    """`item` with its content written letter by letter ("t h e | c a t"); target unchanged.

    The frozen encoder is a character CTC model: what its frames carry, and what a projector can map
    out of them quickly, is letters, about 13 per second of speech plus word gaps, while the word a
    letter belongs to only exists over several windows. A large LLM reads spelled-out words; a 1 M-
    parameter one has to be taught. Each letter (and separator) is doubled with probability
    `repeat_p`, so a reader tolerates a projector emitting a letter over two positions. Only letters
    are kept (digits and punctuation dropped, as in the CTC transcripts).
    """
    words = re.sub(r"[^a-z ]", " ", item.content.lower()).split()
    out: list[str] = []
    for i, word in enumerate(words):
        for ch in ([WORD_SEPARATOR] if i else []) + list(word):
            out.extend([ch] * (2 if rng.random() < repeat_p else 1))
    return TaskText(item.task, " ".join(out), item.target, item.question)


def training_conversations(
    items: Sequence[TaskText],
    prompts: PromptBank,
    rng: np.random.Generator,
    copies: int = 1,
    original_frac: float = 0.6,
    system_frac: float = 0.8,
    stretch_frac: float = 0.0,
    stretch_max: int = 3,
) -> list[list[Message]]:
    """`copies` conversations per item, each with a random instruction, layout and system turn.

    The paper's layout (`original_frac` of them) always carries the system turn, as the study's prompts
    do; the instruction-first ones carry it with probability `system_frac`. A `stretch_frac` share of
    the conversations reads a stretched input (`stretched`, words repeated up to `stretch_max` times).
    """
    n_instr = {t: len(instructions(prompts, t)) for t in TASKS}
    out = []
    for _ in range(copies):
        for item in items:
            if stretch_frac and rng.random() < stretch_frac:
                item = stretched(item, rng, stretch_max)
            layout = "original" if rng.random() < original_frac else "instruction_first"
            choice = int(rng.integers(n_instr[item.task]))
            system = layout == "original" or rng.random() < system_frac
            out.append(conversation(item, user_turn(item, layout, prompts, choice), system))
    return out


def eval_conversations(items: Sequence[TaskText], prompts: PromptBank) -> list[list[Message]]:
    """The study's prompts: paper layout, system turn, the first instruction; reply left out."""
    return [conversation(it, user_turn(it, "original", prompts), True)[:-1] for it in items]


def text_topline(model, tokenizer, items: Sequence[TaskText], prompts: PromptBank | None = None) -> dict:
    """Greedy replies to the study's prompts with the gold text in place of the audio, scored per task.

    Returns `{"ASR": {"paper_wer", ...}, "ST": {"bleu", "chrf", ...}, "SQA": {"f1",
    "exact_match", ...}}` (the evaluation's scorers, percent) plus an example reply per task.
    """
    from llava.demo.base_models.llm import generate_replies
    from llava.eval.metrics import asr_scores, squad_scores, st_scores, wer_paper

    prompts = prompts or PromptBank.load()
    scorers = {"ASR": asr_scores, "ST": st_scores, "SQA": squad_scores}
    out: dict[str, dict] = {}
    for task in TASKS:
        chosen = [it for it in items if it.task == task]
        if not chosen:
            continue
        convs = eval_conversations(chosen, prompts)
        # SQA answers are short; transcripts and translations of these sentences stay under ~40 tokens.
        replies = generate_replies(model, tokenizer, convs, max_new_tokens=24 if task == "SQA" else 64)
        refs = [it.target for it in chosen]
        scores = scorers[task](replies, [[r] for r in refs] if task == "SQA" else refs)
        keep = {k: v for k, v in scores.items() if isinstance(v, (int, float, str))}
        if task == "ASR":  # the paper's WER (mean of per-utterance WERs), under its current or former key
            keep["paper_wer"] = scores.get("wer_paper", scores.get("wer_utt_mean"))
            # A mean of per-utterance WERs can hinge on one reply that runs on: name the worst one.
            wers = [wer_paper([hyp], [ref]) for hyp, ref in zip(replies, refs)]
            worst = max(range(len(wers)), key=wers.__getitem__)
            keep["worst"] = {"ref": refs[worst], "hyp": replies[worst], "wer": round(wers[worst], 1)}
        keep["example"] = {"prompt": convs[0][-1]["content"], "ref": refs[0], "hyp": replies[0]}
        out[task] = keep
    return out


def split_task_texts(corpus: str | Path, split: str) -> list[TaskText]:
    """Task items of a held-out corpus split (`dev` or `test`), read from its parquet files."""
    import pyarrow.parquet as pq

    corpus = Path(corpus)
    mustc = corpus / "MUSTC" / f"{SRC_LANG}-{TGT_LANG}" / f"{split}.parquet"
    squad = corpus / "SpokenSQuAD" / f"spoken_squad_{split}.parquet"
    items: list[TaskText] = []
    t = pq.read_table(mustc, columns=["sentence", "translation"])
    pairs = list(zip(t.column("sentence").to_pylist(), t.column("translation").to_pylist()))
    items += [TaskText("ASR", en.strip(), en.strip()) for en, _ in pairs]
    items += [TaskText("ST", en.strip(), de.strip()) for en, de in pairs]
    if squad.is_file():
        t = pq.read_table(squad, columns=["context", "question", "answer"])
        for ctx, q, a in zip(*(t.column(c).to_pylist() for c in ("context", "question", "answer"))):
            items.append(TaskText("SQA", ctx.strip(), a.strip(), q.replace(AUDIO_TOKEN, "").strip()))
    return items
