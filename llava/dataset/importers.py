"""Converters from other speech-LLM data formats into our parquet layout.

    python -m llava.dataset.importers nemo MANIFEST [MANIFEST ...] OUT [--question-file Q]...
        [--prompt-template T] [--seed N] [--audio-root D]
    python -m llava.dataset.importers slam DATA.jsonl OUT.parquet [--audio-root D]

- NeMo manifests (JSON lines `audio_filepath, offset, duration, question|context, answer`) become
  Spoken-SQuAD-style rows `audio, question, answer, duration, id`; the question ends with
  "\\n<audio>". As in NeMo's SpeechLLM data loader, `question` is optional: a line without one takes
  a question drawn (seeded) from the *question files* (one question per line; with as many files as
  manifests, manifest i draws from file i; otherwise each line draws from all of them), and with no
  question file the question is "what does the audio mean?". Several manifests go into one parquet
  file (OUT ending in `.parquet`) or one file per manifest (OUT a folder). A *prompt template* file
  wraps every question: `{question}` (or `{context}`) marks where it goes, otherwise the template is
  put on the line before it (`--prompt-file`, the flag's earlier name, still works).
- SLAM-LLM JSON lines (`key, source, target`, source = audio file) become ASR rows
  `audio, transcript, duration, key` (the Gigaspeech columns).

Audio is cut (offset/duration), downmixed to mono and stored encoded (`{bytes, path}`, FLAC by
default) at its original sampling rate. A bad line raises `ImportFormatError` naming file and line;
a missing or empty question file names the file. Output files are written atomically (temporary file
+ rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from llava.constants import AUDIO_TOKEN
from llava.dataset.audio import encode_audio
from llava.dataset.prompts import attach_audio
from llava.dataset.seeding import stable_rng
from llava.fileio import atomic_path

# NeMo's question for a manifest line without one when no question file is given.
DEFAULT_QUESTION = "what does the audio mean?"
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class ImportFormatError(ValueError):
    """A malformed input line; the message names the file and the line."""


def write_parquet(rows: Iterable[dict[str, Any]], path: str | os.PathLike, row_group_size: int = 256) -> int:
    """Write dict rows to a parquet file atomically, with the usual file mode (umask applied); an
    `audio` column gets the `{bytes, path}` struct type. Returns the number of rows written."""
    path = Path(path)
    writer: pq.ParquetWriter | None = None
    count = 0

    with atomic_path(path) as tmp:

        def flush(batch: list[dict[str, Any]]) -> None:
            nonlocal writer
            if writer is None:
                table = pa.Table.from_pylist(batch)
                if "audio" in table.column_names and pa.types.is_struct(table.schema.field("audio").type):
                    names = {f.name for f in table.schema.field("audio").type}
                    if names <= {"bytes", "path"}:
                        table = table.set_column(
                            table.column_names.index("audio"),
                            pa.field("audio", AUDIO_TYPE),
                            pa.array([r["audio"] for r in batch], type=AUDIO_TYPE),
                        )
                writer = pq.ParquetWriter(tmp, table.schema)
            else:
                table = pa.Table.from_pylist(batch, schema=writer.schema)
            writer.write_table(table, row_group_size=row_group_size)

        try:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                count += 1
                if len(batch) >= row_group_size:
                    flush(batch)
                    batch = []
            if batch or writer is None:
                if not batch:
                    raise ValueError(f"{path}: nothing to write (no rows)")
                flush(batch)
        finally:
            if writer is not None:
                writer.close()
    return count


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportFormatError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ImportFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(obj: dict[str, Any], names: tuple[str, ...], where: str, kind: type | tuple = str) -> Any:
    for name in names:
        if obj.get(name) is not None:
            value = obj[name]
            if kind is str and (not isinstance(value, str) or not value.strip()):
                raise ImportFormatError(f"{where}: field '{name}' must be a non-empty string, got {value!r}")
            if kind is not str and (isinstance(value, bool) or not isinstance(value, kind)):
                raise ImportFormatError(f"{where}: field '{name}' must be a string or number, got {value!r}")
            return value
    raise ImportFormatError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")


def _seconds(obj: dict[str, Any], name: str, where: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
        raise ImportFormatError(f"{where}: field '{name}' must be a non-negative number, got {value!r}")
    return float(value)


def _read_cut(
    audio_path: str, root: Path, offset: float | None, duration: float | None, where: str
) -> tuple[np.ndarray, int, str]:
    path = Path(audio_path)
    if not path.is_absolute():
        path = root / path
    try:
        sr = sf.info(str(path)).samplerate
        start = int(round((offset or 0.0) * sr))
        frames = int(round(duration * sr)) if duration is not None else -1
        wave, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise ImportFormatError(f"{where}: cannot read audio {path}: {exc}") from None
    wave = wave.mean(axis=1)  # [S] mono
    if wave.size == 0:
        raise ImportFormatError(f"{where}: audio {path} is empty at offset {offset} / duration {duration}")
    return wave, int(sr), str(audio_path)


def load_prompt_template(path: str | os.PathLike | None) -> str:
    """The question template of a prompt-template file ("{question}" when none is given).

    `{question}` (or `{context}`) marks where the question goes; a template without it is put on the
    line before the question.
    """
    if path is None:
        return "{question}"
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: prompt template file not found") from None
    if not text:
        raise ImportFormatError(f"{path}: prompt template file is empty")
    text = text.replace("{context}", "{question}")
    if text.count(AUDIO_TOKEN) > 1:
        raise ImportFormatError(f"{path}: prompt template holds more than one {AUDIO_TOKEN}")
    return text if "{question}" in text else text + "\n{question}"


def load_question_file(path: str | os.PathLike) -> list[str]:
    """The questions of a NeMo question file: one per line, blank lines ignored.

    A missing file, or one without any question, is an `ImportFormatError` naming the file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: question file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFormatError(f"{path}: cannot read question file: {exc}") from None
    questions = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.count(AUDIO_TOKEN) > 1:
            raise ImportFormatError(f"{path}:{lineno}: question holds more than one {AUDIO_TOKEN}")
        questions.append(line.strip())
    if not questions:
        raise ImportFormatError(f"{path}: question file is empty (expected one question per line)")
    return questions


class QuestionSource:
    """NeMo's rule for the question of a manifest line that has none (`question` / `context` absent).

    - no question file: `DEFAULT_QUESTION` ("what does the audio mean?");
    - as many question files as manifests: manifest i draws from file i;
    - otherwise: each line draws one of the files, then a question from it.
    Draws are seeded by (seed, manifest index, line number), so they do not depend on the order in
    which lines are read, and the same arguments give the same questions in every run.
    """

    def __init__(
        self, question_files: Sequence[str | os.PathLike] = (), num_manifests: int = 1, seed: int = 1234
    ):
        self.files = [Path(p) for p in question_files]
        self.questions = [load_question_file(p) for p in self.files]
        self.per_manifest = len(self.files) > 1 and len(self.files) == num_manifests
        self.seed = seed

    def question(self, manifest_index: int, lineno: int) -> str:
        """The question of line `lineno` of manifest `manifest_index` (which has none of its own)."""
        if not self.questions:
            return DEFAULT_QUESTION
        rng = stable_rng(self.seed, "nemo-question", manifest_index, lineno)
        if len(self.questions) == 1:
            pool = self.questions[0]
        elif self.per_manifest:
            pool = self.questions[manifest_index]
        else:
            pool = self.questions[int(rng.integers(len(self.questions)))]
        return pool[int(rng.integers(len(pool)))]


def nemo_rows(
    manifest: str | os.PathLike,
    *,
    question_files: Sequence[str | os.PathLike] | QuestionSource = (),
    prompt_template: str | os.PathLike | None = None,
    audio_root: str | os.PathLike | None = None,
    fmt: str = "flac",
    seed: int = 1234,
    manifest_index: int = 0,
) -> Iterator[dict[str, Any]]:
    """Rows (audio, question, answer, duration, id) from a NeMo manifest.

    A line without `question` / `context` takes one from `question_files` (see `QuestionSource`;
    `manifest_index` says which manifest of the import this is), else "what does the audio mean?".
    `prompt_template` (a file, see `load_prompt_template`) then wraps the question.
    """
    manifest = Path(manifest)
    root = Path(audio_root) if audio_root is not None else manifest.parent
    template = load_prompt_template(prompt_template)
    questions = (
        question_files
        if isinstance(question_files, QuestionSource)
        else QuestionSource(question_files, num_manifests=1, seed=seed)
    )
    for lineno, obj in _json_lines(manifest):
        where = f"{manifest}:{lineno}"
        audio_path = _field(obj, ("audio_filepath",), where)
        if obj.get("question") is None and obj.get("context") is None:
            question = questions.question(manifest_index, lineno)
        else:
            question = _field(obj, ("question", "context"), where)
        answer = _field(obj, ("answer",), where)
        offset, duration = _seconds(obj, "offset", where), _seconds(obj, "duration", where)
        wave, sr, label = _read_cut(audio_path, root, offset, duration, where)
        q = question.replace(AUDIO_TOKEN, "").strip()
        yield {
            "audio": encode_audio(wave, sr, fmt, path=label),
            "question": attach_audio(template.replace("{question}", q)),
            "answer": answer.strip(),
            "duration": len(wave) / sr,
            "id": f"{manifest.stem}:{lineno}",
        }


def slam_rows(
    data: str | os.PathLike, *, audio_root: str | os.PathLike | None = None, fmt: str = "flac"
) -> Iterator[dict[str, Any]]:
    """Rows (audio, transcript, duration, key) from SLAM-LLM JSON lines."""
    data = Path(data)
    root = Path(audio_root) if audio_root is not None else data.parent
    for lineno, obj in _json_lines(data):
        where = f"{data}:{lineno}"
        key = _field(obj, ("key",), where, kind=(str, int))
        source = _field(obj, ("source",), where)
        target = _field(obj, ("target",), where)
        wave, sr, label = _read_cut(source, root, None, None, where)
        yield {
            "audio": encode_audio(wave, sr, fmt, path=label),
            "transcript": target.strip(),
            "duration": len(wave) / sr,
            "key": str(key),
        }


def import_nemo(
    manifests: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    question_files: Sequence[str | os.PathLike] = (),
    seed: int = 1234,
    **kwargs: Any,
) -> int:
    """NeMo manifest(s) -> parquet; returns the row count.

    Several manifests are several datasets (as NeMo's `manifest_filepath` list): `out` ending in
    `.parquet` gets all their rows, any other `out` is a folder with one `{manifest stem}.parquet` per
    manifest (e.g. one per validation set). Question files follow NeMo's rule (`QuestionSource`).
    Every question file is read before any audio, so a bad one fails fast.
    """
    paths = [Path(manifests)] if isinstance(manifests, str | os.PathLike) else [Path(m) for m in manifests]
    if not paths:
        raise ValueError("no manifest to import")
    questions = QuestionSource(question_files, num_manifests=len(paths), seed=seed)
    out = Path(out)

    def rows(indices: Iterable[int]) -> Iterator[dict[str, Any]]:
        for i in indices:
            yield from nemo_rows(paths[i], question_files=questions, manifest_index=i, **kwargs)

    if out.suffix == ".parquet":
        return write_parquet(rows(range(len(paths))), out)
    stems = [p.stem for p in paths]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(
            f"{out}: manifests {clash} share a file name; one parquet per manifest needs distinct names"
        )
    return sum(write_parquet(rows([i]), out / f"{stem}.parquet") for i, stem in enumerate(stems))


def import_slam(data: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> int:
    """SLAM-LLM JSON lines -> parquet; returns the row count."""
    return write_parquet(slam_rows(data, **kwargs), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.dataset.importers", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="format", required=True)
    nemo = sub.add_parser(
        "nemo", help="NeMo manifests (audio_filepath, offset, duration, question|context, answer)"
    )
    nemo.add_argument("manifests", nargs="+", metavar="MANIFEST", help="one or more manifests")
    nemo.add_argument("out", help="OUT.parquet (all rows) or a folder (one parquet per manifest)")
    nemo.add_argument(
        "--question-file",
        "--context-file",
        dest="question_files",
        action="append",
        default=[],
        metavar="FILE",
        help="questions, one per line, for lines without `question` (repeat the flag for several "
        "files: one per manifest, or any number shared by all; NeMo's question_file / context_file)",
    )
    nemo.add_argument(
        "--prompt-template",
        "--prompt-file",
        dest="prompt_template",
        default=None,
        metavar="FILE",
        help="template wrapping every question; {question} marks where it goes",
    )
    nemo.add_argument("--seed", type=int, default=1234, help="seeds the question draws (NeMo's default 1234)")
    slam = sub.add_parser("slam", help="SLAM-LLM JSON lines (key, source, target)")
    slam.add_argument("data")
    slam.add_argument("out")
    for p in (nemo, slam):
        p.add_argument(
            "--audio-root", default=None, help="folder for relative audio paths (default: the input's)"
        )
        p.add_argument("--audio-format", default="flac", choices=["flac", "wav"], help="how audio is stored")
    args = parser.parse_args(argv)
    try:
        if args.format == "nemo":
            n = import_nemo(
                args.manifests,
                args.out,
                question_files=args.question_files,
                seed=args.seed,
                prompt_template=args.prompt_template,
                audio_root=args.audio_root,
                fmt=args.audio_format,
            )
        else:
            n = import_slam(args.data, args.out, audio_root=args.audio_root, fmt=args.audio_format)
    except (ImportFormatError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
