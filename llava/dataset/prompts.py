"""Instruction texts per task (the `INPUTS_TEXT_LIST` JSON file) and how a sample's prompt is chosen.

File format: `{task: [texts]}` or `{task: {language: [texts]}}` (the original repo's layout; the
language is the prompt language, looked up as the sample's source language, then `en`, then the first
key). Texts may use the placeholders `{source_language}`, `{target_language}` and `{question}` (or the
original `<source-language>`, `<target-language>`, `<question>`), filled with English language names.

Every rendered prompt carries exactly one `<audio>`: a text without one gets `"\\n<audio>"` appended
(audio after the instruction, as in the original), a text with several is rejected when the file is
loaded. Training picks a prompt with a seeded generator; evaluation always takes the first one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from llava.constants import AUDIO_TOKEN
from llava.dataset.config import DEFAULT_PROMPTS_PATH, ConfigError

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

    def candidates(
        self,
        task: str,
        *,
        source_language: str | None = None,
        target_language: str | None = None,
        question: str | None = None,
    ) -> list[str]:
        """All prompts for `task`, placeholders filled, each with exactly one `<audio>`."""
        if task not in self.table:
            raise KeyError(f"{self.source}: no prompts for task {task!r}; tasks: {self.tasks}")
        by_lang = self.table[task]
        for key in (source_language, "en", "*"):
            if key in by_lang:
                texts = by_lang[key]
                break
        else:
            texts = next(iter(by_lang.values()))
        out = []
        for text in texts:
            has_question = "{question}" in text
            text = text.replace("{source_language}", language_name(source_language))
            text = text.replace("{target_language}", language_name(target_language))
            if question is not None:
                # The question may itself end with "\n<audio>" (Spoken-SQuAD); keep one placeholder.
                q = question.replace(AUDIO_TOKEN, "").strip()
                text = text.replace("{question}", q) if has_question else f"{text}\n{q}"
            out.append(attach_audio(text))
        return out

    def choose(
        self,
        task: str,
        *,
        source_language: str | None = None,
        target_language: str | None = None,
        question: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> str:
        """A prompt for `task`: drawn with `rng` (training) or the first one when `rng` is None (eval)."""
        options = self.candidates(
            task, source_language=source_language, target_language=target_language, question=question
        )
        if rng is None:
            return options[0]
        return options[int(rng.integers(len(options)))]
