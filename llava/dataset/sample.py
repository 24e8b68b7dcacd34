"""`Sample`: one training/evaluation item, typed and validated when it is made.

A `SpeechDataset` item is a `Sample` (or None when its audio failed to decode). The collator turns a
list of them into a Batch. Validation happens in `__post_init__`, so a malformed item fails where it is
built, naming its id and the field, instead of deep inside the collator or the model.

For code that still treats samples as records, a `Sample` is also a read-only mapping of its field
names (`sample["target"]`, `sample.get("transcript")`, `dict(sample)`); `Sample.from_mapping` builds
one from such a record (filling what can be derived).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from llava.constants import AUDIO_TOKEN
from llava.dataset.audio import DEFAULT_SAMPLING_RATE
from llava.dataset.tasks import TASKS

SEGMENT_KINDS = ("text", "audio")


class SampleError(ValueError):
    """A Sample whose fields break the contract; the message names the sample id and the field."""


@dataclass(eq=False)  # numpy fields: identity comparison, not elementwise
class Sample:
    """One item: audio, the user turn that carries it, the target and what scoring needs."""

    id: str  # stable row id, unique within a dataset
    task: str  # a key of llava.dataset.tasks.TASKS
    audio: np.ndarray  # [S] float32 mono waveform at the encoder's sampling rate
    prompt: str  # the user turn, with exactly one `<audio>`
    target: str  # the text the model is trained to produce (the assistant turn)
    transcript: str | None = None  # what is said (contrastive text side, mixed NWP); None if unknown
    word_boundaries: list[list] | None = None  # [[start_s, end_s, word], ...] or None
    duration: float | None = None  # seconds of `audio`; None: derived from the audio at 16 kHz
    source_lang: str | None = None  # e.g. "en"
    target_lang: str | None = None  # e.g. "de" for ST; None for monolingual tasks
    references: list[str] = field(default_factory=list)  # scoring references; default [target]
    # Mixed speech-text NWP only: [("text", "w1 w2"), ("audio", waveform [S']), ...]; None otherwise.
    segments: list[tuple[str, Any]] | None = None

    def __post_init__(self) -> None:
        def fail(name: str, msg: str) -> SampleError:
            return SampleError(f"sample {self.id!r}: {name}: {msg}")

        if not isinstance(self.id, str) or not self.id:
            raise fail("id", f"expected a non-empty string, got {self.id!r}")
        if self.task not in TASKS:
            raise fail("task", f"unknown task {self.task!r}; known tasks: {list(TASKS)}")
        audio = self.audio
        if not isinstance(audio, np.ndarray) or audio.ndim != 1:
            shape = getattr(audio, "shape", type(audio).__name__)
            raise fail("audio", f"expected a 1-D numpy waveform, got {shape}")
        if audio.size == 0:
            raise fail("audio", "is empty")
        if audio.dtype != np.float32:
            self.audio = audio = audio.astype(np.float32)
        if not isinstance(self.prompt, str):
            raise fail("prompt", f"expected a string, got {type(self.prompt).__name__}")
        n = self.prompt.count(AUDIO_TOKEN)
        if n != 1:
            raise fail(
                "prompt", f"holds {n} {AUDIO_TOKEN} placeholder(s), expected exactly one: {self.prompt!r}"
            )
        if not isinstance(self.target, str):
            raise fail("target", f"expected a string, got {type(self.target).__name__}")
        if self.transcript is not None and not isinstance(self.transcript, str):
            raise fail("transcript", f"expected a string or None, got {type(self.transcript).__name__}")
        if self.word_boundaries is not None:
            if not isinstance(self.word_boundaries, list) or not all(
                isinstance(w, list | tuple) and len(w) == 3 for w in self.word_boundaries
            ):
                raise fail("word_boundaries", "expected a list of [start, end, word]")
        if self.duration is None:
            self.duration = len(audio) / DEFAULT_SAMPLING_RATE
        if not np.isfinite(self.duration) or self.duration <= 0:
            raise fail("duration", f"expected positive seconds, got {self.duration!r}")
        self.duration = float(self.duration)
        if not self.references:
            self.references = [self.target]
        elif not isinstance(self.references, list) or not all(isinstance(r, str) for r in self.references):
            raise fail("references", f"expected a list of strings, got {self.references!r}")
        if self.segments is not None:
            if not isinstance(self.segments, list):
                raise fail(
                    "segments", f"expected a list of (kind, value), got {type(self.segments).__name__}"
                )
            for j, seg in enumerate(self.segments):
                if not isinstance(seg, tuple | list) or len(seg) != 2 or seg[0] not in SEGMENT_KINDS:
                    raise fail(f"segments[{j}]", f"expected (kind, value) with kind in {SEGMENT_KINDS}")

    # ------------------------------------------------------------------------- record view
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def __getitem__(self, key: str) -> Any:
        if key not in self.field_names():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style read of a field (`default` for an unknown key)."""
        return getattr(self, key) if key in self.field_names() else default

    def keys(self) -> tuple[str, ...]:
        return self.field_names()

    def __contains__(self, key: object) -> bool:
        return key in self.field_names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.field_names())

    def __len__(self) -> int:
        return len(self.field_names())

    def with_changes(self, **changes: Any) -> Sample:
        """A validated copy with some fields replaced."""
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, record: Mapping[str, Any]) -> Sample:
        """A Sample from a record with at least id, task, audio, prompt and target.

        The long language keys (`source_language`, `target_language`) are accepted too; missing optional
        fields take their defaults. Unknown keys are an error, so a typo does not pass silently.
        """
        if isinstance(record, Sample):
            return record
        aliases = {"source_language": "source_lang", "target_language": "target_lang"}
        names = set(cls.field_names())
        kwargs: dict[str, Any] = {}
        for key, value in record.items():
            name = aliases.get(key, key)
            if name not in names:
                raise SampleError(
                    f"sample {record.get('id')!r}: unknown field {key!r}; fields: {sorted(names)}"
                )
            kwargs[name] = value
        missing = [k for k in ("id", "task", "audio", "prompt", "target") if k not in kwargs]
        if missing:
            raise SampleError(f"sample {record.get('id')!r}: missing field(s) {missing}")
        if kwargs.get("references") is None:
            kwargs.pop("references", None)
        return cls(**kwargs)


Mapping.register(Sample)
