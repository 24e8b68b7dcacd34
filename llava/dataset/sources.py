"""One parquet file as a lazy source of Samples (`llava.dataset.sample.Sample`).

Loading reads the metadata columns and the still-encoded audio column with pyarrow and filters rows
with vectorised checks (slice, null/empty text, duration bounds, audio headers); nothing is decoded.
`sample(k)` decodes one row's audio and builds the Sample: prompt, target and references come from
the row's task (`llava.dataset.tasks`) and the prompt layout (`llava.dataset.prompts.Prompter`).
Rows that fail a check are skipped and counted in a `SkipCounter` (strict mode raises `DataError`).

Durations: the audio header (read at load when `check_audio`, the default) gives the real duration,
which the duration bounds use; a `duration` column that disagrees by more than 10 % is reported with a
warning. Without the header check the column is trusted.

Memory: the selected row range of the audio column is held in Arrow buffers (encoded bytes, not
waveforms); forked DataLoader workers share them copy-on-write.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llava.constants import AUDIO_TOKEN
from llava.dataset import skips as R
from llava.dataset.audio import (
    DEFAULT_SAMPLING_RATE,
    EMPTY,
    MISSING,
    NON_FINITE,
    UNDECODABLE,
    AudioDecodeError,
    audio_info,
    decode_audio,
)
from llava.dataset.config import SourceSpec
from llava.dataset.prompts import Prompter
from llava.dataset.sample import Sample
from llava.dataset.skips import DataError, SkipCounter
from llava.dataset.tasks import Task, get_task

logger = logging.getLogger(__name__)

# Fields read when present (besides those the task requires).
OPTIONAL_FIELDS = ("transcript", "duration", "word_boundaries")
# A duration column further than this fraction from the audio's real duration is reported.
DURATION_TOLERANCE = 0.10
# What `--no_punctuation` deletes (the original's rule): everything but word characters and blanks.
PUNCTUATION = re.compile(r"[^\w\s]")


def strip_punctuation(text: str) -> str:
    """`text` without punctuation (`[^\\w\\s]`): "don't, well-known" -> "dont wellknown"."""
    return PUNCTUATION.sub("", text)


def parse_word_boundaries(value: Any) -> list[list]:
    """`word_boundaries` (JSON text, a list of [start, end, word], or a list of {start, end, word})
    -> `[[start_s, end_s, word], ...]`; raises ValueError when malformed (times must not go back)."""
    if isinstance(value, str | bytes):
        value = json.loads(value)
    if not isinstance(value, list) or not value:
        raise ValueError("word_boundaries must be a non-empty list")
    out: list[list] = []
    last_start = 0.0
    for item in value:
        if isinstance(item, dict):
            item = [item.get("start"), item.get("end"), item.get("word")]
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise ValueError(f"expected [start, end, word], got {item!r}")
        start, end, word = float(item[0]), float(item[1]), item[2]
        if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end < start or start < last_start:
            raise ValueError(f"bad word times {item!r}")
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"empty word in {item!r}")
        out.append([start, end, word.strip()])
        last_start = start
    return out


def _audio_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
        if "array" in names:
            return "array"
        if names & {"bytes", "path"}:
            return "encoded"
        return None
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    return None


def _empty_text_mask(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(null mask, empty-or-blank mask) of a text column, or of a list-of-texts column (answers)."""
    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        # a list of texts (gold answers) is empty when none of its items is a non-blank text
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat = pc.list_flatten(col)
        parents = np.asarray(pc.list_parent_indices(col).to_numpy(zero_copy_only=False), dtype=np.int64)
        if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)):
            flat = pc.cast(flat, pa.string())
        filled = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(flat)), 0)
        nonblank = np.asarray(filled.to_numpy(zero_copy_only=False)) > 0
        empty = np.bincount(parents[nonblank], minlength=len(col)) == 0
    else:
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            col = pc.cast(col, pa.string())
        trimmed = pc.utf8_length(pc.utf8_trim_whitespace(col))
        empty = np.asarray(pc.fill_null(trimmed, 0).to_numpy(zero_copy_only=False)) == 0
    return null, empty & ~null


class ParquetSource:
    """The rows of one parquet file that pass the metadata checks, as lazily decoded Samples."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        skips: SkipCounter | None = None,
        strict: bool = False,
        check_audio: bool = True,
        need_word_boundaries: bool = False,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        keep_unreadable: bool = False,
        audio_memo_bytes: int = 0,
    ):
        self.spec = spec
        # Evaluation: rows whose audio cannot be read at load stay in (not counted as skipped); they
        # fail when decoded and are scored as empty predictions, so a test set never shrinks.
        self.keep_unreadable = keep_unreadable
        self.name = spec.name
        self.task = spec.task
        self.task_def: Task = get_task(spec.task)
        self.strict = strict
        self.sampling_rate = sampling_rate
        self.skips = skips if skips is not None else SkipCounter()
        self.base_dir = spec.path.parent
        self.rows = np.zeros(0, dtype=np.int64)  # kept rows, indices into the loaded slice
        self.durations = np.zeros(0, dtype=np.float64)  # [len(self)] seconds
        self.first_row = 0  # file row of slice row 0 (for ids)
        self.duration_mismatches = 0  # rows whose duration column disagreed with the audio
        self._cols: dict[str, pa.ChunkedArray] = {}
        # Decoded waveforms kept for rows seen again (later epochs), up to `audio_memo_bytes`; read-only,
        # so code that would change a shared waveform in place fails instead of corrupting it.
        self._audio_memo: dict[int, np.ndarray] = {}
        self._audio_memo_left = audio_memo_bytes
        self._load(need_word_boundaries, check_audio)

    # ------------------------------------------------------------------------- loading
    def _skip(self, reason: str, mask: np.ndarray, keep: np.ndarray, detail: str = "") -> None:
        bad = mask & keep
        n = int(bad.sum())
        if not n or (self.keep_unreadable and reason in (MISSING, EMPTY, NON_FINITE, UNDECODABLE)):
            return
        if self.strict:
            row = self.first_row + int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.spec.path}: row {row}: {reason}{': ' + detail if detail else ''}")
        self.skips.add(reason, n, self.name)
        keep &= ~bad

    def _load(self, need_word_boundaries: bool, check_audio: bool) -> None:
        spec, path = self.spec, self.spec.path
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot read parquet file: {exc}") from exc
        names = set(pf.schema_arrow.names)
        start, stop = spec.partition.amount.bounds(pf.metadata.num_rows)
        n = stop - start
        self.first_row = start
        self.skips.seen += n

        task = self.task_def
        required = ["audio", *task.required_fields] + (["word_boundaries"] if need_word_boundaries else [])
        missing = [f for f in required if spec.columns.get(f, f) not in names]
        if missing:
            cols = ", ".join(f"'{spec.columns.get(f, f)}' ({f})" for f in missing)
            msg = f"{path}: column {cols} missing (columns: {sorted(names)}); needed for {self.task} ({spec.field})"
            if self.strict:
                raise DataError(msg)
            logger.warning("%s; skipping its %d rows", msg, n)
            self.skips.add(R.MISSING_COLUMN, n, self.name)
            return
        optional = (*OPTIONAL_FIELDS, task.question_field, task.instruction_field)
        fields = required + [
            f
            for f in dict.fromkeys(optional)
            if f is not None and f not in required and spec.columns.get(f, f) in names
        ]
        table = self._read_rows(pf, [spec.columns.get(f, f) for f in fields], start, stop)
        self._cols = {f: table.column(spec.columns.get(f, f)) for f in fields}

        self._audio_kind = _audio_kind(self._cols["audio"].type)
        if self._audio_kind is None:
            msg = f"{path}: column '{spec.columns['audio']}' has type {self._cols['audio'].type}, not audio"
            if self.strict:
                raise DataError(msg)
            logger.warning("%s; skipping its %d rows", msg, n)
            self.skips.add(UNDECODABLE, n, self.name)
            self._cols = {}
            return
        self._index_audio_chunks()

        keep = np.ones(n, dtype=bool)
        for f in task.required_fields:
            null, empty = _empty_text_mask(self._cols[f])
            self._skip(R.MISSING_VALUE, null, keep, f"'{spec.columns.get(f, f)}' is null")
            self._skip(R.EMPTY_TEXT, empty, keep, f"'{spec.columns.get(f, f)}' is empty")
        for f in (task.question_field, task.instruction_field):
            if f in self._cols and self._cols[f].type in (pa.string(), pa.large_string()):
                extra = pc.fill_null(pc.count_substring(self._cols[f], AUDIO_TOKEN), 0).to_numpy(
                    zero_copy_only=False
                )
                self._skip(R.BAD_PROMPT, np.asarray(extra) > 1, keep, f"more than one {AUDIO_TOKEN} in '{f}'")

        durations = np.full(n, np.nan)
        if "duration" in self._cols:
            try:
                col = pc.cast(self._cols["duration"], pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                name = spec.columns.get("duration", "duration")
                raise DataError(f"{path}: column '{name}' is not numeric seconds: {exc}") from None
            durations = np.array(col.to_numpy(zero_copy_only=False), dtype=np.float64)  # writable copy
        if check_audio or np.isnan(durations).any():
            measured = self._check_audio(keep, durations, check_all=check_audio)
            self._use_measured(durations, measured, keep)
        lo, hi = spec.partition.min_duration, spec.partition.max_duration
        with np.errstate(invalid="ignore"):
            if lo is not None:
                self._skip(R.TOO_SHORT, durations < lo, keep, f"duration below {lo:g} s")
            if hi is not None:
                self._skip(R.TOO_LONG, durations > hi, keep, f"duration above {hi:g} s")

        if need_word_boundaries:
            bad = np.zeros(n, dtype=bool)
            col = self._cols["word_boundaries"]
            for r in np.flatnonzero(keep):
                try:
                    parse_word_boundaries(col[int(r)].as_py())
                except (ValueError, TypeError) as exc:
                    bad[r] = True
                    if self.strict:
                        raise DataError(
                            f"{path}: row {self.first_row + int(r)}: {R.BAD_WORD_BOUNDARIES}: {exc}"
                        ) from exc
            self._skip(R.BAD_WORD_BOUNDARIES, bad, keep)

        self.rows = np.flatnonzero(keep).astype(np.int64)
        self.durations = durations[self.rows]

    @staticmethod
    def _read_rows(pf: pq.ParquetFile, columns: list[str], start: int, stop: int) -> pa.Table:
        """Read only the row groups overlapping [start, stop), then slice (zero copy)."""
        meta = pf.metadata
        groups, first, pos = [], None, 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            if pos + rows > start and pos < stop:
                groups.append(g)
                first = pos if first is None else first
            pos += rows
        if not groups:
            return pf.schema_arrow.empty_table().select(columns)
        table = pf.read_row_groups(groups, columns=columns)
        return table.slice(start - first, stop - start)

    def _index_audio_chunks(self) -> None:
        chunks = self._cols["audio"].chunks
        audio_type = self._cols["audio"].type
        # Flat float lists are checked vectorised; anything else (multi-channel lists) row by row.
        self._nested_arrays = False
        if self._audio_kind == "array":
            array_type = audio_type.field("array").type
            is_list = pa.types.is_list(array_type) or pa.types.is_large_list(array_type)
            self._nested_arrays = not (is_list and not pa.types.is_list(array_type.value_type))
        self._chunk_starts = np.cumsum([0] + [len(c) for c in chunks])
        self._audio_chunks: list[dict[str, pa.Array]] = []
        for chunk in chunks:
            if self._audio_kind in ("array", "encoded"):
                t = chunk.type
                self._audio_chunks.append(
                    {t.field(i).name: pc.struct_field(chunk, [i]) for i in range(t.num_fields)} | {"_": chunk}
                )
            else:
                self._audio_chunks.append({"_": chunk})

    def _use_measured(self, durations: np.ndarray, measured: np.ndarray, keep: np.ndarray) -> None:
        """Replace column durations by the measured ones (in place), warning when they disagree."""
        known = np.isfinite(measured) & keep
        with np.errstate(invalid="ignore"):
            off = (
                known
                & np.isfinite(durations)
                & (np.abs(durations - measured) > DURATION_TOLERANCE * measured)
            )
        if off.any():
            r = int(np.flatnonzero(off)[0])
            logger.warning(
                "%s: %d row(s) whose duration column differs from the audio by more than %d %% "
                "(e.g. row %d: column %.3g s, audio %.3g s); the audio's duration is used",
                self.spec.path,
                int(off.sum()),
                round(DURATION_TOLERANCE * 100),
                self.first_row + r,
                durations[r],
                measured[r],
            )
        self.duration_mismatches = int(off.sum())
        durations[known] = measured[known]

    def _check_audio(self, keep: np.ndarray, durations: np.ndarray, check_all: bool) -> np.ndarray:
        """Header-level checks (readable, non-empty, finite decoded arrays); returns the measured
        durations ([n] seconds, NaN where the header was not read or is unusable)."""
        reasons: dict[str, np.ndarray] = {}
        measured = np.full(len(keep), np.nan)

        def mark(reason: str, r: int) -> None:
            reasons.setdefault(reason, np.zeros(len(keep), dtype=bool))[r] = True

        if self._audio_kind == "array" and not self._nested_arrays:
            # Decoded mono arrays: lengths and non-finite values are checked on the flat Arrow buffers.
            null_l, len_l, sr_l, nonfinite_l = [], [], [], []
            for chunk_fields in self._audio_chunks:
                arrays = chunk_fields["array"]
                null_l.append(np.asarray(arrays.is_null().to_numpy(zero_copy_only=False), dtype=bool))
                lengths = np.asarray(
                    pc.fill_null(pc.list_value_length(arrays), 0).to_numpy(zero_copy_only=False),
                    dtype=np.int64,
                )
                len_l.append(lengths)
                srs = chunk_fields.get("sampling_rate")
                sr_l.append(
                    np.asarray(pc.fill_null(srs, 0).to_numpy(zero_copy_only=False), dtype=np.float64)
                    if srs is not None
                    else np.zeros(len(arrays))
                )
                values = arrays.flatten()  # honours the list offsets; null lists contribute nothing
                nonfinite = np.zeros(len(arrays), dtype=bool)
                if pa.types.is_floating(values.type):
                    bad = ~np.isfinite(np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64))
                    cum = np.concatenate([[0], np.cumsum(bad)])
                    ends = np.cumsum(lengths)
                    nonfinite = (cum[ends] - cum[ends - lengths]) > 0
                nonfinite_l.append(nonfinite)
            null, lengths, sr, nonfinite = (np.concatenate(x) for x in (null_l, len_l, sr_l, nonfinite_l))
            self._skip(MISSING, null, keep, "audio is null")
            self._skip(EMPTY, lengths == 0, keep, "audio array is empty")
            self._skip(UNDECODABLE, sr <= 0, keep, "sampling_rate missing or not positive")
            self._skip(NON_FINITE, nonfinite, keep, "audio array holds NaN or inf")
            ok = keep & (sr > 0)
            measured[ok] = lengths[ok] / sr[ok]
        else:
            for r in np.flatnonzero(keep):
                r = int(r)
                if not check_all and not np.isnan(durations[r]):
                    continue
                try:
                    frames, sr = audio_info(self._audio_value(r), base_dir=self.base_dir)
                except AudioDecodeError as exc:
                    mark(exc.reason, r)
                    continue
                if frames <= 0:
                    mark(EMPTY, r)
                else:
                    measured[r] = frames / sr
        for reason, mask in reasons.items():
            self._skip(reason, mask, keep)
        # A row whose duration is unknown either way could not be measured: its audio is unusable.
        unknown = np.isnan(durations) & np.isnan(measured)
        self._skip(UNDECODABLE, unknown, keep, "no duration and unreadable audio header")
        return measured

    # ------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows)

    def row_id(self, k: int) -> str:
        """Stable id `{type}.{task}.{language}:{file stem}:{file row}` (e.g. `MuSTC.ST.en-de:train:17`)."""
        return f"{self.name}:{self.first_row + int(self.rows[k])}"

    def _value(self, field: str, r: int) -> Any:
        col = self._cols.get(field)
        return None if col is None else col[r].as_py()

    def text(self, field: str, k: int) -> Any:
        """The raw value of a metadata field for kept row k (None when the file has no such column)."""
        return self._value(field, int(self.rows[k]))

    def _audio_value(self, r: int) -> Any:
        c = int(np.searchsorted(self._chunk_starts, r, side="right") - 1)
        j = r - int(self._chunk_starts[c])
        fields = self._audio_chunks[c]
        if self._audio_kind == "array":
            arrays = fields["array"]
            if not arrays[j].is_valid:
                return None
            values = arrays[j].values.to_numpy(zero_copy_only=False)
            sr = fields["sampling_rate"][j].as_py() if "sampling_rate" in fields else None
            return {"array": values, "sampling_rate": sr}
        if self._audio_kind == "encoded":
            if not fields["_"][j].is_valid:
                return None
            b = fields["bytes"][j].as_py() if "bytes" in fields else None
            p = fields["path"][j].as_py() if "path" in fields else None
            return {"bytes": b, "path": p}
        return fields["_"][j].as_py()

    def load_audio(self, k: int) -> np.ndarray:
        """Decoded float32 mono waveform of kept row k at `sampling_rate`; raises AudioDecodeError."""
        wave = self._audio_memo.get(k)
        if wave is not None:
            return wave
        wave = decode_audio(self._audio_value(int(self.rows[k])), self.sampling_rate, base_dir=self.base_dir)
        if wave.nbytes <= self._audio_memo_left:
            wave.flags.writeable = False
            self._audio_memo[k] = wave
            self._audio_memo_left -= wave.nbytes
        return wave

    def row(self, k: int) -> dict[str, Any]:
        """The metadata of kept row k: logical field -> raw value (no audio, nothing decoded)."""
        r = int(self.rows[k])
        return {f: self._value(f, r) for f in self._cols if f != "audio"}

    def reference(self, k: int, *, no_punctuation: bool = False) -> list[str]:
        """The scoring references of kept row k (SQA: every gold answer), without decoding audio."""
        refs = self.task_def.references(self.row(k))
        if no_punctuation or self.spec.no_punctuation:
            refs = [strip_punctuation(r).strip() for r in refs]
        return refs

    def sample(
        self,
        k: int,
        prompter: Prompter,
        rng: np.random.Generator | None = None,
        *,
        no_punctuation: bool = False,
    ) -> Sample:
        """The Sample of kept row k; `rng` draws the instruction when sampling is random (None: fixed).

        With `no_punctuation` (or the source's own setting) punctuation is deleted from the transcript,
        the word-boundary words (words left empty are dropped) and the target. Raises AudioDecodeError
        when the audio cannot be decoded.
        """
        audio = self.load_audio(k)
        task, row = self.task_def, self.row(k)
        src, tgt = self.spec.source_language, self.spec.target_language
        strip = no_punctuation or self.spec.no_punctuation
        transcript = row.get("transcript")
        transcript = (transcript.strip() or None) if isinstance(transcript, str) else None
        wb = row.get("word_boundaries")
        try:
            word_boundaries = parse_word_boundaries(wb) if wb not in (None, "", []) else None
        except (ValueError, TypeError):
            # Only interleaving needs them, and then they were validated at load: here they are optional.
            word_boundaries = None
        target, references = task.target(row), task.references(row)
        if strip:
            target = strip_punctuation(target).strip()
            references = [strip_punctuation(r).strip() for r in references]
            transcript = (strip_punctuation(transcript).strip() or None) if transcript else None
            if word_boundaries is not None:
                kept = [[a, b, strip_punctuation(w)] for a, b, w in word_boundaries]
                word_boundaries = [w for w in kept if w[2].strip()] or None
        return Sample(
            id=self.row_id(k),
            task=self.task,
            audio=audio,
            prompt=prompter.user_turn(task, row, source_language=src, target_language=tgt, rng=rng),
            target=target,
            transcript=transcript,
            word_boundaries=word_boundaries,
            duration=len(audio) / self.sampling_rate,
            source_lang=src,
            target_lang=tgt,
            references=references,
        )
