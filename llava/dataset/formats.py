"""Dataset types of the data config: where each keeps its parquet files and what its columns are called.

The type keys are the original repo's (`MuSTC`, `MuSTC_NWP`, `Gigaspeech`, `Giga_NWP`, `MLS`,
`Spoken_SQuAD`) plus `Parquet`, generic files whose columns are named in the config. Logical fields
(`FIELDS`) are what the tasks of `llava.dataset.tasks` read; a type maps each to a parquet column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llava.dataset.tasks import META_ATTRIBUTES, task_fields
from llava.dataset.tasks import TASKS as TASK_REGISTRY

TASKS = tuple(TASK_REGISTRY)
# Logical fields a source can provide; dataset types map them to their parquet column names.
FIELDS = tuple(dict.fromkeys(("audio", "duration", "transcript", "word_boundaries", *task_fields())))


@dataclass(frozen=True)
class DatasetType:
    """Where a dataset type keeps its parquet files and what its columns are called."""

    name: str
    tasks: tuple[str, ...]  # tasks this type can serve
    columns: Mapping[str, str]  # logical field -> parquet column
    # File templates relative to `datapath`, tried in order (the first existing one wins); placeholders:
    # {src}, {tgt} (from a "src-tgt" language entry), {lang} (the entry as written), {partition}.
    file_templates: tuple[str, ...]
    needs_pair: bool = False  # languages must be "src-tgt"


_MUSTC_COLUMNS = {
    "audio": "audio",
    "transcript": "sentence",
    "translation": "translation",
    "duration": "duration",
}
_ASR_COLUMNS = {"audio": "audio", "transcript": "transcript", "duration": "duration"}
# MLS with the speaker descriptions (parler-tts/mls-eng-speaker-descriptions): transcript + attributes.
_MLS_COLUMNS = {**_ASR_COLUMNS, **{f: f for f in META_ATTRIBUTES}}
_NWP_COLUMNS = {
    "audio": "audio",
    "transcript": "transcription",
    "word_boundaries": "word_boundaries",
    "duration": "duration",
}
_SQA_COLUMNS = {"audio": "audio", "question": "question", "answer": "answer", "duration": "duration"}

# Generic parquet files: every logical field defaults to a column of the same name.
GENERIC_TYPE = "Parquet"

DATASET_TYPES: dict[str, DatasetType] = {
    "MuSTC": DatasetType("MuSTC", ("ASR", "ST"), _MUSTC_COLUMNS, ("{src}-{tgt}/{partition}.parquet",), True),
    "MuSTC_NWP": DatasetType(
        "MuSTC_NWP",
        ("ASR",),
        _NWP_COLUMNS,
        ("{src}-{tgt}_{partition}_processed.parquet", "{src}-{tgt}_{partition}_processed*.parquet"),
        True,
    ),
    "Gigaspeech": DatasetType(
        "Gigaspeech",
        ("ASR",),
        _ASR_COLUMNS,
        # The original code spelled the folder `parque_files`; both spellings are accepted.
        ("parquet_files/gigaspeech_{partition}.parquet", "parque_files/gigaspeech_{partition}.parquet"),
    ),
    # The original writes `{language}_{split}_processed.parquet` and reads `..._processed*.parquet`
    # (shards); its configs give one language ("en").
    "Giga_NWP": DatasetType("Giga_NWP", ("ASR",), _NWP_COLUMNS, ("{lang}_{partition}_processed*.parquet",)),
    "MLS": DatasetType(
        "MLS",
        ("META", "ASR"),
        _MLS_COLUMNS,
        (
            # the original's layout: training shards and one test file under parquet_files/
            "parquet_files/mls_{partition}_chunk_*.parquet",
            "parquet_files/mls_{partition}.parquet",
            "{src}/{partition}.parquet",
            "mls_{src}_{partition}.parquet",
        ),
    ),
    "Spoken_SQuAD": DatasetType(
        "Spoken_SQuAD", ("SQA",), _SQA_COLUMNS, ("spoken_squad_{partition}.parquet",)
    ),
    GENERIC_TYPE: DatasetType(GENERIC_TYPE, TASKS, {f: f for f in FIELDS}, ("{partition}.parquet",)),
}
