"""Row ranges of a parquet file as the data config writes them (`amount: ":10%"`, `"10:20%"`, `"0:500"`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_AMOUNT = re.compile(rf"^\s*(?:{_NUM}\s*(%)?)?\s*:\s*(?:{_NUM}\s*(%)?)?\s*$")


@dataclass(frozen=True)
class AmountSlice:
    """A row range of a parquet file: percent (`":10%"`, `"10:20%"`) or absolute rows (`"0:500"`)."""

    start: float | None  # None = from the first row
    stop: float | None  # None = to the last row
    percent: bool  # True: start/stop are percentages of the row count
    text: str = ":100%"  # as written in the config

    def bounds(self, num_rows: int) -> tuple[int, int]:
        """Half-open row range [start, stop) for a file of `num_rows` rows."""

        def at(value: float | None, default: int) -> int:
            if value is None:
                return default
            # Percent boundaries round to the closest row, as `datasets` split slicing does.
            row = math.floor(num_rows * value / 100 + 0.5) if self.percent else int(value)
            return min(max(row, 0), num_rows)

        start, stop = at(self.start, 0), at(self.stop, num_rows)
        return start, max(start, stop)


FULL = AmountSlice(None, None, True, ":100%")


def parse_amount(text: Any) -> AmountSlice:
    """Parse `":X%"`, `"X1:X2%"` (both percent), `"X1%:X2%"`, or `"X1:X2"` (rows); raises ValueError."""
    expected = f'expected ":X%" or "X1:X2%", got {text!r}'
    if not isinstance(text, str):
        raise ValueError(expected)
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):  # tolerate the `split[...]` bracket form
        inner = inner[1:-1]
    m = _AMOUNT.match(inner)
    if not m:
        raise ValueError(expected)
    start_s, start_pct, stop_s, stop_pct = m.groups()
    if start_pct and stop_s is not None and not stop_pct:
        raise ValueError(f"{expected} (start is a percentage but stop is a row count)")
    percent = bool(start_pct or stop_pct)
    start = float(start_s) if start_s is not None else None
    stop = float(stop_s) if stop_s is not None else None
    if not percent and ((start is not None and not start.is_integer()) or (stop and not stop.is_integer())):
        raise ValueError(f"{expected} (row counts must be integers)")
    if percent and any(v is not None and v > 100 for v in (start, stop)):
        raise ValueError(f"{expected} (percentages must lie in [0, 100])")
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"{expected} (start {start:g} is after stop {stop:g})")
    return AmountSlice(start, stop, percent, text)
