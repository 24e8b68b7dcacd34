"""Writing the corpus files: atomic small files and parquet files streamed in row groups."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StreamingParquet:
    """Rows appended in order, written in row groups to a temp file that replaces `path` on `commit()`.

    Small row groups keep random access to single rows cheap for the data loader, and streaming
    keeps memory flat however large the corpus.
    """

    ROW_GROUP = 256

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, schema)
        self.buffer: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0

    def append(self, row: dict) -> None:
        for name in self.schema.names:
            self.buffer[name].append(row[name])
        self.rows += 1
        if len(self.buffer[self.schema.names[0]]) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.buffer[self.schema.names[0]]:
            self.writer.write_table(pa.table(self.buffer, schema=self.schema))
            self.buffer = {name: [] for name in self.schema.names}

    def commit(self) -> None:
        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


_STR, _F64 = pa.string(), pa.float64()
MUSTC_SCHEMA = pa.schema(
    [("audio", AUDIO_TYPE), ("sentence", _STR), ("translation", _STR), ("duration", _F64)]
)
NWP_SCHEMA = pa.schema(
    [
        ("audio", AUDIO_TYPE),
        ("transcription", _STR),
        ("word_boundaries", _STR),
        ("source_language", _STR),
        ("target_language", _STR),
        ("task", _STR),
        ("duration", _F64),
    ]
)
SQA_SCHEMA = pa.schema(
    [("audio", AUDIO_TYPE), ("question", _STR), ("answer", _STR), ("duration", _F64), ("context", _STR)]
)
