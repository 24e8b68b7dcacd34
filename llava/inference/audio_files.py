"""Audio files as inference inputs: directories, list files and single files, as a dataset of Samples.

An input is
- a directory: every file below it (recursively, hidden ones excepted) whose suffix is an audio format
  soundfile reads (`AUDIO_SUFFIXES`); other files are counted and reported, not read;
- a file with an audio suffix: that file;
- any other file: a list, one audio path per line (blank lines and `#` comments skipped), relative
  paths taken from the list's folder.
An item's id is its path as the user named it (`DIR/sub/a.wav`, or the line of the list); the same
file named twice is an error. An entry that does not exist or cannot be decoded stays an item: it is
reported as failed with the reason, and the rest is processed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from llava.dataset.audio import AudioDecodeError, decode_audio
from llava.dataset.prompts import Prompter
from llava.dataset.sample import Sample
from llava.dataset.seeding import stable_rng
from llava.dataset.tasks import Task
from llava.inference.runner import Unreadable

__all__ = ["AUDIO_SUFFIXES", "AudioFiles", "AudioInput", "list_audio_inputs"]

# Suffixes of the formats libsndfile reads (and the usual spellings of a few).
AUDIO_SUFFIXES = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64 .sph .nist .voc".split()
)


@dataclass(frozen=True)
class AudioInput:
    """One audio file to run inference on."""

    id: str  # the path as the user named it
    path: Path  # where it is read from


@dataclass
class InputListing:
    """The audio files of the inputs, in order, and what was passed over."""

    items: list[AudioInput] = field(default_factory=list)
    not_audio: Counter[str] = field(default_factory=Counter)  # suffix -> files skipped in directories
    empty_inputs: list[str] = field(default_factory=list)  # directories or lists without any audio

    def summary(self) -> str:
        parts = [f"{len(self.items)} audio files"]
        if self.not_audio:
            kinds = ", ".join(f"{s or '(no suffix)'} x{n}" for s, n in self.not_audio.most_common())
            parts.append(f"{sum(self.not_audio.values())} other files not read ({kinds})")
        if self.empty_inputs:
            parts.append(f"no audio in: {', '.join(self.empty_inputs)}")
        return "; ".join(parts)


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def _scan_directory(root: Path, name: str, listing: InputListing) -> int:
    found = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if _is_audio(path):
            listing.items.append(AudioInput(f"{name.rstrip('/')}/{rel.as_posix()}", path))
            found += 1
        else:
            listing.not_audio[path.suffix.lower()] += 1
    return found


def _read_list(path: Path, listing: InputListing) -> int:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--audios {path}: cannot read it as a list of audio paths ({exc})") from None
    found = 0
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        listing.items.append(AudioInput(entry, p if p.is_absolute() else path.parent / p))
        found += 1
    return found


def list_audio_inputs(inputs: Sequence[str | os.PathLike]) -> InputListing:
    """The audio files named by `inputs` (directories, audio files, lists; see the module docstring).

    Raises ValueError naming `--audios` for an input that does not exist, when the same file is named
    twice, or when there is no audio at all.
    """
    listing = InputListing()
    for given in inputs:
        name = str(given)
        path = Path(name).expanduser()
        if path.is_dir():
            found = _scan_directory(path, name, listing)
        elif _is_audio(path):
            listing.items.append(AudioInput(name, path))  # a missing file fails when read, counted
            found = 1
        elif path.is_file():
            found = _read_list(path, listing)
        else:
            raise ValueError(f"--audios {name}: no such directory or file")
        if not found:
            listing.empty_inputs.append(name)
    seen: dict[str, str] = {}
    for item in listing.items:
        key = os.path.realpath(item.path)
        if key in seen:
            raise ValueError(f"--audios: {item.path} is named twice ({seen[key]!r} and {item.id!r})")
        seen[key] = item.id
    if not listing.items:
        suffixes = " ".join(sorted(AUDIO_SUFFIXES))
        raise ValueError(
            f"--audios {' '.join(map(str, inputs))}: no audio files ({listing.summary()}; audio suffixes: {suffixes})"
        )
    return listing


class AudioFiles(Dataset):
    """Inference Samples of one task over audio files; an unreadable file yields an `Unreadable`."""

    def __init__(
        self,
        items: Sequence[AudioInput],
        task: Task,
        prompter: Prompter,
        *,
        sampling_rate: int,
        source_lang: str | None = None,
        target_lang: str | None = None,
        row: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        """
        Args:
            items: the files (`list_audio_inputs(...).items`).
            task: what to ask for; its user turn comes from `prompter`.
            prompter: the prompt layout and instruction bank.
            sampling_rate: the encoder's rate the audio is resampled to.
            source_lang, target_lang: the languages the task's instruction names.
            row: the row fields the task's prompt reads (its question or instruction field).
            seed: with random instruction sampling, seeds each file's draw (with its id).
        """
        self.items = list(items)
        self.task = task
        self.prompter = prompter
        self.sampling_rate = sampling_rate
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.row = dict(row or {})
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def prompt(self, i: int) -> str:
        """The user turn of item i (the same for every file unless instructions are sampled)."""
        rng = stable_rng(self.seed, "prompt", self.items[i].id)
        return self.prompter.user_turn(
            self.task, self.row, source_language=self.source_lang, target_language=self.target_lang, rng=rng
        )

    def size_hint(self) -> list[float]:
        """File sizes: a length proxy that orders batches without decoding (0 for a missing file)."""
        return [float(p.path.stat().st_size) if p.path.is_file() else 0.0 for p in self.items]

    def __getitem__(self, i: int) -> Sample | Unreadable:
        item = self.items[i]
        try:
            wave = decode_audio(str(item.path), self.sampling_rate)
        except AudioDecodeError as exc:
            return Unreadable(exc.reason, str(exc))
        return Sample(
            id=item.id,
            task=self.task.name,
            audio=np.asarray(wave, dtype=np.float32),
            prompt=self.prompt(i),
            target="",
            duration=len(wave) / self.sampling_rate,
            source_lang=self.source_lang,
            target_lang=self.target_lang,
        )
