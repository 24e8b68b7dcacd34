"""Prediction files: JSON lines written batch by batch, resumable, and the run record beside them.

`{stem}_preds.jsonl` holds one record per utterance:

    {"id": ..., "task": "ASR", "prediction": "...", "reference": "...", ...}

- `reference`: the target text; `references` (only when they differ from `[reference]`): every
  acceptable answer, e.g. all SQuAD gold answers; `source`: the transcript (COMET's source text);
  `failed`: why the prediction is empty (unreadable audio), scored as an empty output.
- Records are appended and fsynced batch by batch, so a killed run loses at most one batch; a truncated
  last line (a kill mid-write) is dropped and redone. When a set is complete the file is rewritten in
  dataset order, so an interrupted and an uninterrupted run give the same file.

`{stem}_run.json` records the fingerprint of what made the predictions (`llava.inference.fingerprint`):
resuming under a different fingerprint is refused with the list of what changed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.fileio import atomic_write_text
from llava.inference.fingerprint import fingerprint_changes

__all__ = [
    "append_predictions",
    "check_run_record",
    "ensure_writable_dir",
    "prediction_record",
    "read_predictions",
    "record_references",
    "write_predictions",
]

logger = logging.getLogger(__name__)


def prediction_record(
    sample_id: str,
    task: str,
    prediction: str,
    references: Sequence[str],
    *,
    source: str | None = None,
    failed: str | None = None,
) -> dict[str, Any]:
    """One line of a predictions file (see the module docstring)."""
    references = [str(r) for r in references]
    if not references:
        raise ValueError(f"prediction record {sample_id!r}: no reference")
    rec: dict[str, Any] = {
        "id": sample_id,
        "task": task,
        "prediction": prediction,
        "reference": references[0],
    }
    if references != references[:1]:
        rec["references"] = references
    if source:
        rec["source"] = source
    if failed:
        rec["failed"] = failed
    return rec


def record_references(record: Mapping[str, Any], where: str = "") -> list[str]:
    """The scoring references of a record; a record without `reference` is an error naming it."""
    if "references" in record:
        refs = record["references"]
        if not isinstance(refs, list) or not refs:
            raise ValueError(f"{where}record {record.get('id')!r}: 'references' must be a non-empty list")
        return [str(r) for r in refs]
    if "reference" not in record:
        raise ValueError(
            f"{where}record {record.get('id')!r} has no 'reference' (nor 'references'): it cannot be "
            "scored (was it written by batch inference, which has no references?)"
        )
    return [str(record["reference"])]


def read_predictions(path: str | os.PathLike, repair: bool = True) -> dict[str, dict]:
    """Records of a predictions file by id. A truncated last line (a run killed mid-write) is ignored
    and, with `repair`, cut from the file so that appending continues on a clean line. A malformed
    line anywhere else is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: dict[str, dict] = {}
    keep = 0  # bytes of the file that hold complete records
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "id" not in rec or "prediction" not in rec:
                    raise ValueError("not a prediction record (needs id and prediction)")
            except ValueError as exc:
                if any(x.strip() for x in lines[n:]):
                    raise ValueError(f"{path}: line {n} is not a valid prediction record: {exc}") from None
                logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(line))
                break
            records[str(rec["id"])] = rec
        keep += len(line) + (1 if n < len(lines) else 0)
    if repair:
        if keep < len(data):
            with open(path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        elif data and not data.endswith(b"\n"):  # a complete last record without its newline
            _append_bytes(path, b"\n")
    return records


def _append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def append_predictions(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Append records and fsync (one batch at a time: a kill loses at most the batch being written)."""
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    _append_bytes(Path(path), text.encode("utf-8"))


def write_predictions(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite the file with `records` in this order, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def check_run_record(
    path: str | os.PathLike,
    fingerprint: Mapping[str, Any],
    *,
    predictions_exist: bool,
    overwrite: bool = False,
) -> None:
    """Refuse to add to predictions made by something else; then record `fingerprint` at `path`.

    With existing predictions, the stored fingerprint must equal `fingerprint`; otherwise a ValueError
    names every part that changed (and predictions without a run record are refused too, since what
    made them is unknown). `overwrite` skips the check: the caller starts over.
    """
    path = Path(path)
    if predictions_exist and not overwrite:
        how = "use another output location, or --overwrite to start over"
        if not path.is_file():
            raise ValueError(
                f"{path}: missing, so what made the predictions beside it is unknown; refusing to resume ({how})"
            )
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable run record ({exc}); refusing to resume ({how})") from None
        changed = fingerprint_changes(previous.get("fingerprint", previous), fingerprint)
        if changed:
            raise ValueError(
                f"{path}: the predictions there were made by something else; changed: {', '.join(changed)}; "
                f"refusing to mix them ({how})"
            )
    atomic_write_text(
        path, json.dumps({"fingerprint": fingerprint}, indent=2, sort_keys=True, default=str) + "\n"
    )


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create `path` if needed and prove it writable now (before any model loads); errors name `flag`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check.")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PermissionError(f"{flag} {path}: not a writable directory ({exc.strerror or exc})") from None
    return path
