"""Instruction texts per task (the `INPUTS_TEXT_LIST` JSON file) and the prompt layouts (`PROMPT_FORMATS`).

Instruction file format: `{task: [texts]}` or `{task: {language: [texts]}}` (the original repo's
layout; the language is the prompt language, looked up as the sample's source language, then `en`,
then the first key). Texts may use the placeholders `{source_language}`, `{target_language}` and
`{question}` (or the original `<source-language>`, `<target-language>`, `<question>`), filled with
English language names. The original repo never published its instruction texts: the shipped
`prompts.json` holds our own.

Prompt layouts (`--prompt_format`):
- `original`, the paper's layout (the original repo's Llama-3.1 conversation): a fixed system turn
  (`PAPER_SYSTEM_PROMPT`), the audio first, `<audio>\\n{instruction}`, and for spoken QA
  `<audio>\\n{instruction} {question}`; one fixed instruction per task (the first text of its list).
- `instruction_first`: no system turn, the instruction before the audio, `{instruction}\\n<audio>`; for
  spoken QA the row's question is placed in the instruction's `{question}` or on the line after it
  (a question that already carries `<audio>`, as Spoken-SQuAD's do, is the whole prompt); a seeded
  instruction drawn per sample and epoch.
`--instruction_sampling fixed|random` overrides the layout's choice of instruction and
`--system_prompt` its system turn. Evaluation always uses the fixed instruction.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava.constants import AUDIO_TOKEN
from llava.dataset.config import DEFAULT_PROMPTS_PATH, ConfigError
from llava.dataset.tasks import Task

# The system turn of the original repo's `conv_llama_3_1` conversation.
PAPER_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
INSTRUCTION_SAMPLING = ("fixed", "random")
# `--system_prompt` values that switch the system turn off.
NO_SYSTEM_PROMPT = ("none", "")

# English names for the placeholders; unknown codes are used as written.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "ca": "Catalan",
    "cs": "Czech",
    "cy": "Welsh",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fr": "French",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "lv": "Latvian",
    "mn": "Mongolian",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sl": "Slovenian",
    "sv": "Swedish",
    "ta": "Tamil",
    "tr": "Turkish",
    "zh": "Chinese",
}

_ALIASES = {
    "<source-language>": "{source_language}",
    "<target-language>": "{target_language}",
    "<question>": "{question}",
}


def language_name(code: str | None) -> str:
    """English name of a language code ("de" -> "German"); unknown codes as written."""
    if not code:
        return ""
    return LANGUAGE_NAMES.get(code.lower(), code)


def attach_audio(text: str) -> str:
    """Ensure exactly one `<audio>`: append it on its own line when absent; reject several."""
    n = text.count(AUDIO_TOKEN)
    if n == 0:
        return f"{text.rstrip()}\n{AUDIO_TOKEN}"
    if n > 1:
        raise ValueError(f"prompt holds {n} {AUDIO_TOKEN} placeholders, expected one: {text!r}")
    return text


def _without_audio(text: str) -> str:
    # The layout places the audio itself: drop a placeholder the text carries, and the blanks around it.
    return re.sub(r"[ \t]*" + re.escape(AUDIO_TOKEN) + r"[ \t]*", " ", text).strip()


def _fill_question(instruction: str, question: str | None, sep: str) -> str:
    """The instruction with the question in its `{question}` placeholder, or after it joined by `sep`."""
    if "{question}" in instruction:
        return instruction.replace("{question}", question or "").strip()
    return f"{instruction}{sep}{question}" if question else instruction


# ----------------------------------------------------------------------------- prompt layouts
@dataclass(frozen=True)
class PromptFormat:
    """How the user turn is laid out around the audio, and the layout's defaults."""

    name: str
    description: str
    system_prompt: str | None  # the default system turn; None: none
    instruction_sampling: str  # default choice of instruction: fixed | random
    audio_first: bool  # `<audio>\n{instruction}` (True) or `{instruction}\n<audio>` (False)
    question_sep: str  # joins instruction and question when the instruction has no {question}

    def user_turn(self, instruction: str, question: str | None = None) -> str:
        """The user turn for an instruction (and a spoken-QA question), with exactly one `<audio>`."""
        if self.audio_first:
            text = _fill_question(
                _without_audio(instruction), _without_audio(question or "") or None, self.question_sep
            )
            return f"{AUDIO_TOKEN}\n{text}"
        if question is not None and AUDIO_TOKEN in question:
            # Spoken-SQuAD rows carry their own layout ("question\n<audio>"): the question is the prompt.
            return attach_audio(question.strip())
        q = question.strip() if question else None
        return attach_audio(_fill_question(instruction, q, self.question_sep))


PROMPT_FORMATS: dict[str, PromptFormat] = {
    "original": PromptFormat(
        name="original",
        description="the paper's layout: fixed system turn, <audio> first, one fixed instruction per task",
        system_prompt=PAPER_SYSTEM_PROMPT,
        instruction_sampling="fixed",
        audio_first=True,
        question_sep=" ",
    ),
    "instruction_first": PromptFormat(
        name="instruction_first",
        description="no system turn, instruction then <audio>, a seeded instruction per sample",
        system_prompt=None,
        instruction_sampling="random",
        audio_first=False,
        question_sep="\n",
    ),
}
DEFAULT_PROMPT_FORMAT = "original"


def get_prompt_format(name: str) -> PromptFormat:
    """The registered layout `name`; raises ValueError naming `--prompt_format` and the known layouts."""
    if name not in PROMPT_FORMATS:
        raise ValueError(f"--prompt_format {name!r}: unknown prompt format; known: {list(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def check_instruction_sampling(value: str | None) -> None:
    """Raise ValueError naming `--instruction_sampling` unless it is None, fixed or random."""
    if value is not None and value not in INSTRUCTION_SAMPLING:
        raise ValueError(f"--instruction_sampling {value!r}: expected one of {list(INSTRUCTION_SAMPLING)}")


def _looks_like_path(value: str) -> bool:
    # A single token with a folder separator or a file suffix is meant as a file, not as the text.
    if any(c.isspace() for c in value):
        return False
    return (
        os.sep in value or "/" in value or Path(value).suffix.lower() in (".txt", ".md", ".prompt", ".json")
    )


def resolve_system_prompt(value: str | None, prompt_format: str = DEFAULT_PROMPT_FORMAT) -> str | None:
    """The system turn: the layout's default (value None), none ("none" or ""), a file's text, or the text.

    A value that looks like a file path (one token with a `/` or a `.txt`/`.md` suffix) but names no
    file is an error naming `--system_prompt`, so a typo in a path does not become the system turn.
    """
    fmt = get_prompt_format(prompt_format)
    if value is None:
        return fmt.system_prompt
    if value.strip().lower() in NO_SYSTEM_PROMPT:
        return None
    path = Path(value).expanduser()
    if _looks_like_path(value) or path.is_file():
        if not path.is_file():
            raise ValueError(f"--system_prompt {value}: file not found")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"--system_prompt {value}: the file is empty")
        return text
    return value.strip()


@dataclass(frozen=True)
class PromptSettings:
    """The resolved prompt options of a run (what `--prompt_format`, `--system_prompt` and
    `--instruction_sampling` amount to)."""

    prompt_format: str  # a key of PROMPT_FORMATS
    system_prompt: str | None  # the system turn's text; None: no system turn
    instruction_sampling: str  # fixed | random


def resolve_prompt_settings(
    prompt_format: str | None = None,
    system_prompt: str | None = None,
    instruction_sampling: str | None = None,
    config_format: str | None = None,
) -> PromptSettings:
    """Validate and resolve the prompt flags (ValueError naming the flag); call it before loading a model.

    `prompt_format` None takes `config_format` (a data config's PROMPT_FORMAT), else "original";
    `system_prompt` and `instruction_sampling` None take the layout's defaults.
    """
    name = prompt_format or config_format or DEFAULT_PROMPT_FORMAT
    fmt = get_prompt_format(name)
    check_instruction_sampling(instruction_sampling)
    return PromptSettings(
        prompt_format=name,
        system_prompt=resolve_system_prompt(system_prompt, name),
        instruction_sampling=instruction_sampling or fmt.instruction_sampling,
    )


# ----------------------------------------------------------------------------- instruction bank
class PromptBank:
    """Task -> instruction texts, with placeholder filling and seeded choice."""

    def __init__(self, table: dict[str, Any], source: str = "<prompts>"):
        self.source = source
        self.table: dict[str, dict[str, list[str]]] = {}
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"{source}: expected a JSON object task -> list of instruction texts")
        for task, value in table.items():
            by_lang = {"*": value} if isinstance(value, list) else value
            if not isinstance(by_lang, dict) or not by_lang:
                raise ConfigError(f"{source}: {task}: expected a list of texts or a mapping language -> list")
            self.table[task] = {}
            for lang, texts in by_lang.items():
                where = f"{task}" if lang == "*" else f"{task}.{lang}"
                if not isinstance(texts, list) or not texts:
                    raise ConfigError(f"{source}: {where}: expected a non-empty list of texts, got {texts!r}")
                for i, text in enumerate(texts):
                    if not isinstance(text, str) or not text.strip():
                        raise ConfigError(f"{source}: {where}[{i}]: expected a non-empty text, got {text!r}")
                    if text.count(AUDIO_TOKEN) > 1:
                        raise ConfigError(f"{source}: {where}[{i}]: more than one {AUDIO_TOKEN} in {text!r}")
                normalized = []
                for text in texts:
                    for old, new in _ALIASES.items():
                        text = text.replace(old, new)
                    normalized.append(text)
                self.table[task][lang] = normalized

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> PromptBank:
        """Read a prompt JSON file (default: the shipped `llava/dataset/prompts.json`)."""
        path = Path(path) if path is not None else DEFAULT_PROMPTS_PATH
        try:
            table = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: prompt file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        return cls(table, source=Path(path).name)

    @property
    def tasks(self) -> list[str]:
        return list(self.table)

    def instructions(
        self, task: str, *, source_language: str | None = None, target_language: str | None = None
    ) -> list[str]:
        """The instruction texts of `task` with the language placeholders filled (`{question}` kept)."""
        if task not in self.table:
            raise KeyError(f"{self.source}: no prompts for task {task!r}; tasks: {self.tasks}")
        by_lang = self.table[task]
        for key in (source_language, "en", "*"):
            if key in by_lang:
                texts = by_lang[key]
                break
        else:
            texts = next(iter(by_lang.values()))
        return [
            t.replace("{source_language}", language_name(source_language)).replace(
                "{target_language}", language_name(target_language)
            )
            for t in texts
        ]

    def candidates(
        self,
        task: str,
        *,
        source_language: str | None = None,
        target_language: str | None = None,
        question: str | None = None,
        prompt_format: str = "instruction_first",
    ) -> list[str]:
        """All user turns for `task` in a layout (default `instruction_first`), each with one `<audio>`."""
        fmt = get_prompt_format(prompt_format)
        texts = self.instructions(task, source_language=source_language, target_language=target_language)
        if question is not None and not fmt.audio_first:
            question = question.replace(AUDIO_TOKEN, "").strip()  # one placeholder: the instruction's
        return [fmt.user_turn(text, question) for text in texts]

    def choose(
        self,
        task: str,
        *,
        source_language: str | None = None,
        target_language: str | None = None,
        question: str | None = None,
        rng: np.random.Generator | None = None,
        prompt_format: str = "instruction_first",
    ) -> str:
        """A user turn for `task`: drawn with `rng`, or the first one when `rng` is None (fixed)."""
        options = self.candidates(
            task,
            source_language=source_language,
            target_language=target_language,
            question=question,
            prompt_format=prompt_format,
        )
        if rng is None:
            return options[0]
        return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- the user turn of a row
class Prompter:
    """Builds a row's user turn from its task, the instruction bank and a prompt layout."""

    def __init__(
        self,
        bank: PromptBank | None = None,
        prompt_format: str = DEFAULT_PROMPT_FORMAT,
        instruction_sampling: str | None = None,
    ):
        """
        Args:
            bank: instruction texts; default the shipped prompts.json.
            prompt_format: a key of PROMPT_FORMATS.
            instruction_sampling: fixed | random; None: the layout's default.
        """
        check_instruction_sampling(instruction_sampling)
        self.bank = bank if bank is not None else PromptBank.load()
        self.format = get_prompt_format(prompt_format)
        self.instruction_sampling = instruction_sampling or self.format.instruction_sampling

    def check_tasks(self, tasks: list[Task]) -> None:
        """Every task that takes its instruction from the bank must have texts there (ConfigError)."""
        for task in tasks:
            if task.instruction_field is None and task.name not in self.bank.tasks:
                raise ConfigError(
                    f"{self.bank.source}: no instructions for task {task.name!r}; tasks: {self.bank.tasks}"
                )

    def user_turn(
        self,
        task: Task,
        row: Mapping[str, Any],
        *,
        source_language: str | None = None,
        target_language: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> str:
        """The user turn of `row`; `rng` draws the instruction when sampling is random (None: the first)."""
        question = task.question(row)
        instruction = task.given_instruction(row)
        if instruction is None:
            texts = self.bank.instructions(
                task.name, source_language=source_language, target_language=target_language
            )
            pick = 0 if rng is None or self.instruction_sampling == "fixed" else int(rng.integers(len(texts)))
            instruction = texts[pick]
        return self.format.user_turn(instruction, question)
