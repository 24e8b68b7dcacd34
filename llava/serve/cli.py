"""Chat about an audio file with a checkpoint, in the terminal or through a pipe.

    python -m llava.serve.cli --model-path CKPT --audio talk.wav
    printf 'Transcribe the audio.\\nTranslate it into German.\\n' | python -m llava.serve.cli --model-path CKPT --audio a.wav

Each line read from stdin is one user message; replies are printed as `ASSISTANT: ...`.
- The first user message after an audio file is loaded carries the `<audio>` placeholder, where the
  prompt layout puts it (`--prompt-format`, default the paper's: audio first, `<audio>\n{message}`)
  unless the message already has one; later turns are text only, with the whole history rendered by
  the tokenizer's chat template after the layout's system turn (`--system-prompt` to change it).
- `... audio:/path/to/file.wav` at the end of a message loads that file and clears the history; the
  text before it (if any) is the first message about the new file.
- `<reset>` clears the history (the audio stays loaded).
- An empty line or end of input quits. An unreadable audio file prints an error and the session goes on
  with the previous audio.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import torch

from llava.constants import AUDIO_TOKEN
from llava.dataset.audio import MISSING, AudioDecodeError, decode_audio
from llava.inference.arguments import (
    add_generation_arguments,
    add_model_arguments,
    add_prompt_arguments,
    load_model_from_args,
    prompt_options_from_args,
    settings_from_args,
)
from llava.inference.generation import GenerationSettings, generate_batch
from llava.inference.prompts import PromptOptions

__all__ = ["ChatSession", "main"]

RESET = "<reset>"
# `audio:PATH` at the end of a message (PATH runs to the end of the line, so it may contain spaces).
_AUDIO_COMMAND = re.compile(r"(?:^|\s)audio:(?P<path>\S.*?)\s*$")


class ChatSession:
    """Multi-turn chat state: the loaded audio and the message history."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: GenerationSettings | None = None,
        prompt: PromptOptions | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.prompt = prompt or PromptOptions()
        self.system_prompt = self.prompt.system_turn()
        self.audio: np.ndarray | None = None  # [S] float32 at the encoder's sampling rate
        self.audio_path: str | None = None
        self.messages: list[dict[str, str]] = []
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    def load_audio(self, path: str) -> float:
        """Decode `path`, make it the session's audio and clear the history; returns its seconds.

        Raises AudioDecodeError (the session is unchanged then)."""
        if not os.path.isfile(path):
            raise AudioDecodeError(f"no such file: {path}", MISSING)
        rate = self.model.audio_tower.sampling_rate
        wave = decode_audio(path, rate)
        self.audio, self.audio_path = wave, path
        self.reset()
        return len(wave) / rate

    def reset(self) -> None:
        self.messages = []

    def _input_ids(self) -> list[int]:
        """The history rendered by the chat template, `<audio>` expanded into its run of audio tokens."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        text = self.tokenizer.apply_chat_template(
            system + self.messages, tokenize=False, add_generation_prompt=True
        )
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        slots = [i for i, t in enumerate(ids) if t == self.audio_token_id]
        if not slots:
            return ids
        if len(slots) > 1 or self.audio is None:
            raise RuntimeError(f"the rendered history holds {len(slots)} {AUDIO_TOKEN} placeholders")
        n = int(self.model.num_audio_tokens(len(self.audio)))
        return ids[: slots[0]] + [self.audio_token_id] * n + ids[slots[0] + 1 :]

    def ask(self, text: str) -> str:
        """Add a user message, generate the reply, add it to the history and return it."""
        if self.audio is not None and not self.messages:
            # The first message carries the audio: where the user put `<audio>`, else where the layout does.
            head, sep, tail = text.partition(AUDIO_TOKEN)
            if sep:
                text = (head + sep + tail.replace(AUDIO_TOKEN, " ")).strip()
            else:
                text = self.prompt.format.user_turn(text.strip())
        else:
            text = text.replace(AUDIO_TOKEN, " ").strip()  # no second copy of the audio
        self.messages.append({"role": "user", "content": text})
        try:
            ids = torch.tensor([self._input_ids()], dtype=torch.long)  # [1, L]
            batch: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if (ids == self.audio_token_id).any():
                batch["audio_values"] = torch.from_numpy(self.audio)[None]  # [1, S]
                batch["audio_lengths"] = torch.tensor([len(self.audio)])  # [1]
            reply = generate_batch(self.model, self.tokenizer, batch, self.settings)[0]
        except BaseException:
            self.messages.pop()  # a failed turn leaves no trace in the history
            raise
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    def handle(self, line: str, out: TextIO | None = None, err: TextIO | None = None) -> bool:
        """Process one input line; returns False when the session should end.

        Replies and notices go to `out`, errors to `err` (default: stdout / stderr at call time)."""
        out = out or sys.stdout
        err = err or sys.stderr
        line = line.strip()
        if not line:
            return False
        if line == RESET:
            self.reset()
            print("(history cleared)", file=out, flush=True)
            return True
        match = _AUDIO_COMMAND.search(line)
        if match:
            path = match.group("path")
            try:
                seconds = self.load_audio(path)
            except AudioDecodeError as exc:
                kept = f"; still using {self.audio_path}" if self.audio_path else ""
                print(f"error: cannot load audio: {exc}{kept}", file=err, flush=True)
                return True
            print(f"(loaded {path}, {seconds:.1f} s; history cleared)", file=out, flush=True)
            line = line[: match.start()].strip()
            if not line:
                return True
        print(f"ASSISTANT: {self.ask(line)}", file=out, flush=True)
        return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava.serve.cli", description="Chat about an audio file.")
    add_model_arguments(p)
    p.add_argument("--audio", default=None, help="audio file to start with (any format soundfile reads)")
    add_prompt_arguments(p)
    add_generation_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # bad options fail before the model loads
        settings, prompt = settings_from_args(args), prompt_options_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    model, tokenizer = load_model_from_args(args)
    session = ChatSession(model, tokenizer, settings, prompt)
    if args.audio:
        try:
            seconds = session.load_audio(args.audio)
            print(f"(loaded {args.audio}, {seconds:.1f} s)", flush=True)
        except AudioDecodeError as exc:
            print(f"error: cannot load audio: {exc}", file=sys.stderr, flush=True)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Type a message; end it with audio:PATH to load a file, {RESET} to clear, empty line to quit.")
    while True:
        if interactive:
            print("USER: ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:  # end of input
            break
        try:
            if not session.handle(line):
                break
        except KeyboardInterrupt:
            print("(interrupted)", flush=True)
            if not interactive:
                break
        except Exception as exc:  # one failed turn should not end the session
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
