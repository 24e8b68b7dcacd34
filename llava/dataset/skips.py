"""Counting of skipped samples: nothing bad in the data is dropped without being counted."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SkippedRow:
    """A row that could not be used, standing in for its sample in a batch.

    Loader workers decode in their own processes, so a failure they count stays in their copy of the
    dataset; the marker carries the row's id and reason to the process that trains, which counts each
    id once however often (epochs, mixing weights, workers) the row is fetched.
    """

    id: str  # the dataset's row id
    reason: str  # a skip reason, e.g. "bad_audio", "non_finite_audio", "exceeds_max_length"
    source: str | None = None  # the source's name, for the per-source lines of the summary


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

    def add_rows(self, rows: Iterable[SkippedRow]) -> None:
        """Count each skipped row once, by its reason and source (rows are counted as given: pass
        each id once)."""
        for row in rows:
            self.add(row.reason, 1, row.source)

    def copy(self) -> SkipCounter:
        """An independent counter with the same counts (e.g. the load-time counts, before training
        adds decode-time ones in this process)."""
        out = SkipCounter()
        out.merge(self)
        return out

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


class RowSkips:
    """Rows dropped from batches, counted once per row id however often they are fetched (epochs,
    mixing weights, several loader workers or data-parallel ranks: merge the tallies)."""

    def __init__(self) -> None:
        self.rows: dict[str, SkippedRow] = {}
        # Rows dropped without an id (a dataset item None): counted per fetch, the best one can do.
        self.anonymous: Counter[str] = Counter()

    def add_batch(self, skipped: Mapping[str, int] | None, rows: Iterable[SkippedRow] | None) -> None:
        """A batch's `skipped` ({reason: count}) and `skipped_rows` (the markers of rows with an id);
        the part of `skipped` the markers do not account for is counted as anonymous."""
        rows = list(rows or [])
        for row in rows:
            self.rows.setdefault(row.id, row)
        rest = Counter(skipped or {})
        rest.subtract(Counter(row.reason for row in rows))
        self.anonymous.update(+rest)

    def merge(self, other: RowSkips) -> None:
        for row_id, row in other.rows.items():
            self.rows.setdefault(row_id, row)
        self.anonymous.update(other.anonymous)

    @property
    def total(self) -> int:
        return len(self.rows) + sum(self.anonymous.values())

    def counts(self) -> Counter[str]:
        """Skipped rows by reason."""
        out = Counter(row.reason for row in self.rows.values())
        out.update(self.anonymous)
        return out

    def counter(self, load_skips: SkipCounter | None = None) -> SkipCounter:
        """A `SkipCounter` of `load_skips` (e.g. the rows left out when the dataset was built) plus
        these rows, by reason and source."""
        out = load_skips.copy() if load_skips is not None else SkipCounter()
        out.add_rows(self.rows.values())
        out.update(self.anonymous)
        return out
