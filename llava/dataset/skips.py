"""Counting of skipped samples: nothing bad in the data is dropped without being counted."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# Skip reasons decided from metadata at load time.
MISSING_COLUMN = "missing_column"
MISSING_VALUE = "missing_value"
EMPTY_TEXT = "empty_text"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
BAD_PROMPT = "bad_prompt"
BAD_WORD_BOUNDARIES = "bad_word_boundaries"
# Reason the collator uses for samples the dataset returned as None (audio that failed to decode).
BAD_AUDIO = "bad_audio"
# Reason the collator uses for sequences whose prompt and audio alone exceed max_length.
EXCEEDS_MAX_LENGTH = "exceeds_max_length"


class DataError(ValueError):
    """Bad data met in strict mode (or data that makes a whole source unusable)."""


class SkipCounter:
    """Counts skipped samples by reason (and by source), and renders a one-line summary."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.by_source: dict[str, Counter[str]] = {}
        self.seen = 0  # rows inspected, for the "x of y" in the summary

    def add(self, reason: str, n: int = 1, source: str | None = None) -> None:
        if n <= 0:
            return
        self.reasons[reason] += n
        if source is not None:
            self.by_source.setdefault(source, Counter())[reason] += n

    def update(self, counts: Mapping[str, int], source: str | None = None) -> None:
        for reason, n in counts.items():
            self.add(reason, int(n), source)

    def merge(self, other: SkipCounter) -> None:
        self.seen += other.seen
        self.reasons.update(other.reasons)
        for source, counts in other.by_source.items():
            self.by_source.setdefault(source, Counter()).update(counts)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.reasons.items()))

    def summary(self) -> str:
        """E.g. `skipped 12 of 1000 samples: too_long=10, empty_text=2` (`no samples skipped` if clean)."""
        if not self.reasons:
            return f"no samples skipped (of {self.seen})" if self.seen else "no samples skipped"
        parts = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common())
        of = f" of {self.seen}" if self.seen else ""
        lines = [f"skipped {self.total}{of} samples: {parts}"]
        for source, counts in sorted(self.by_source.items()):
            lines.append(f"  {source}: " + ", ".join(f"{r}={n}" for r, n in counts.most_common()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"
