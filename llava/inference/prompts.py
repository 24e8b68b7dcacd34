"""Prompt options of evaluation, batch inference and chat: the layout, the system turn, the instruction.

The layouts themselves live with the data (`llava.dataset.prompts.PROMPT_FORMATS`): the user turn of a
row is built there (`Prompter`), the system turn is rendered by the collator. This module holds the
three options together, checks them before any model loads, and builds what inference needs from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llava.dataset.collator import SpeechCollator
from llava.dataset.prompts import (
    PromptBank,
    Prompter,
    PromptFormat,
    PromptSettings,
    get_prompt_format,
    resolve_prompt_settings,
)

__all__ = ["NO_LENGTH_LIMIT", "PromptOptions", "inference_collator"]

NO_LENGTH_LIMIT = 1 << 30  # inference never truncates a prompt or drops an utterance for its length


@dataclass(frozen=True)
class PromptOptions:
    """`--prompt-format`, `--system-prompt`, `--instruction-sampling` as given (None: the default)."""

    # A key of llava.dataset.prompts.PROMPT_FORMATS; None: the data config's PROMPT_FORMAT, else "original".
    prompt_format: str | None = None
    # None: the layout's own system turn; "none": no system turn; otherwise a text or a file holding it.
    system_prompt: str | None = None
    instruction_sampling: str | None = None  # fixed | random; None: the layout's default

    def resolved(self) -> PromptSettings:
        """What the options amount to (the system turn's file read); ValueError naming a bad flag."""
        return resolve_prompt_settings(self.prompt_format, self.system_prompt, self.instruction_sampling)

    def check(self) -> None:
        """Raise ValueError naming the flag for an unknown layout or sampling, or a missing prompt file."""
        self.resolved()

    @property
    def format_name(self) -> str:
        """The layout in effect (the default one when none was chosen)."""
        return self.resolved().prompt_format

    @property
    def format(self) -> PromptFormat:
        return get_prompt_format(self.format_name)

    def system_turn(self) -> str | None:
        """The resolved system turn (a file's text read), or None for none."""
        return self.resolved().system_prompt

    def prompter(self, bank: PromptBank | None = None) -> Prompter:
        """The user-turn builder of the data side for these options."""
        return Prompter(bank, self.format_name, self.instruction_sampling)

    def as_dict(self) -> dict[str, Any]:
        """The options as they take effect, for run records."""
        return dataclasses.asdict(self.resolved())


def inference_collator(
    tokenizer: Any,
    model: Any,
    options: PromptOptions | None = None,
    *,
    padding_side: str = "left",
    with_transcript: bool = False,
) -> SpeechCollator:
    """A collator for generation: generation prompt appended, left padded, never truncating."""
    options = options or PromptOptions()
    return SpeechCollator(
        tokenizer,
        model.num_audio_tokens,
        with_transcript=with_transcript,
        max_length=NO_LENGTH_LIMIT,
        inference=True,
        padding_side=padding_side,
        system_prompt=options.system_turn(),
    )
