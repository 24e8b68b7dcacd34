"""The task registry: what each task reads from a row, how its prompt and target are built, how it is scored.

A task is one entry of `TASKS`; adding a task means adding one entry here (and, when it has new row
fields, naming their parquet columns in `llava.dataset.config.DATASET_TYPES`). Everything else - the
required-column check at load, the prompt, the target, the scoring references and the metric families
eval applies - is read from the entry.

A *row* is the mapping of logical field name -> raw value (None when the file has no such column) that
`ParquetSource` reads for one parquet row; `Task` never sees audio.

`metrics` names scorer families registered in `llava.eval.metrics.METRICS` (strings only: the dataset
package never imports eval): "asr" (the paper's WER and a corpus WER), "st" (sacreBLEU, chrF, COMET when
available), "sqa" (SQuAD exact match and F1, max over gold answers), "classification" (accuracy and
macro-F1) and "regression" (MAE) for the closed-ended tasks CLS and REG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]

# The speaker attributes of the MLS speaker-description data, in the order the META target lists them.
META_ATTRIBUTES = (
    "speaking_rate",
    "gender",
    "noise",
    "reverberation",
    "speech_monotony",
    "sdr_noise",
    "pesq_speech_quality",
)


def clean_text(value: Any) -> str:
    """A raw text value as a stripped string ("" for None)."""
    return "" if value is None else str(value).strip()


def answer_list(value: Any) -> list[str]:
    """The non-empty gold answers of a row's `answer` (a text, or a list of texts)."""
    items = value if isinstance(value, list | tuple) else [value]
    return [clean_text(a) for a in items if clean_text(a)]


@dataclass(frozen=True)
class Task:
    """One task: the row fields it needs, how its prompt parts and target come from a row, its metrics."""

    name: str  # registry key, also the prompt-bank key of its instructions
    required_fields: tuple[str, ...]  # logical row fields (besides audio) a row must have, non-empty
    build_target: Callable[[Row], str]  # row -> target text (what the model is trained to produce)
    metrics: tuple[str, ...]  # scorer families of llava.eval.metrics.METRICS; () = not scorable
    description: str  # one line for listings and error messages
    # Row field holding a per-row question added to the instruction (SQA); None when the task has none.
    question_field: str | None = None
    # Row field holding a per-row instruction that replaces the prompt bank's (INSTRUCT); None otherwise.
    instruction_field: str | None = None
    # row -> every reference a prediction is scored against; None: [build_target(row)].
    build_references: Callable[[Row], list[str]] | None = None

    def target(self, row: Row) -> str:
        """The target text of a row."""
        return self.build_target(row)

    def references(self, row: Row) -> list[str]:
        """The scoring references of a row (SQA: every gold answer; otherwise [target])."""
        if self.build_references is not None:
            return self.build_references(row)
        return [self.build_target(row)]

    def question(self, row: Row) -> str | None:
        """The row's question as written (it may carry `<audio>`: the prompt layout decides); None if none."""
        if self.question_field is None:
            return None
        return clean_text(row.get(self.question_field)) or None

    def given_instruction(self, row: Row) -> str | None:
        """The row's own instruction as written (INSTRUCT rows may carry one); None when absent or blank."""
        if self.instruction_field is None:
            return None
        return clean_text(row.get(self.instruction_field)) or None


def _meta_target(row: Row) -> str:
    # The speaker description of the original's MLS data: seven attribute labels, comma separated.
    return ", ".join(clean_text(row.get(f)) for f in META_ATTRIBUTES)


def _sqa_target(row: Row) -> str:
    answers = answer_list(row.get("answer"))
    return answers[0] if answers else ""


def _number_text(value: Any) -> str:
    # A numeric column gives floats: 150.0 is written "150", as a person would answer.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return clean_text(value)


TASKS: dict[str, Task] = {
    "ASR": Task(
        name="ASR",
        required_fields=("transcript",),
        build_target=lambda row: clean_text(row.get("transcript")),
        metrics=("asr",),
        description="speech recognition: the transcript",
    ),
    "ST": Task(
        name="ST",
        required_fields=("translation",),
        build_target=lambda row: clean_text(row.get("translation")),
        metrics=("st",),
        description="speech translation: the translation",
    ),
    "SQA": Task(
        name="SQA",
        required_fields=("question", "answer"),
        build_target=_sqa_target,
        metrics=("sqa",),
        description="spoken question answering: the first gold answer (scored against all)",
        question_field="question",
        build_references=lambda row: answer_list(row.get("answer")),
    ),
    "META": Task(
        name="META",
        required_fields=META_ATTRIBUTES,
        build_target=_meta_target,
        metrics=("asr", "st"),
        description="speaker description: " + ", ".join("{" + f + "}" for f in META_ATTRIBUTES),
    ),
    "INSTRUCT": Task(
        name="INSTRUCT",
        required_fields=("target",),
        build_target=lambda row: clean_text(row.get("target")),
        metrics=(),
        description="free-form instruction following: the row's target (not scored)",
        instruction_field="prompt",
    ),
    # Closed-ended tasks (LTU-AS style): an optional per-row question and a short answer, scored after
    # the answer is mapped onto the label set / read as a number (llava.eval.closed).
    "CLS": Task(
        name="CLS",
        required_fields=("label",),
        build_target=lambda row: clean_text(row.get("label")),
        metrics=("classification",),
        description="closed-ended classification (e.g. speaker gender): the row's label; accuracy, macro-F1",
        question_field="question",
    ),
    "REG": Task(
        name="REG",
        required_fields=("value",),
        build_target=lambda row: _number_text(row.get("value")),
        metrics=("regression",),
        description="regression from a text answer (e.g. speaking rate): the row's value; MAE",
        question_field="question",
    ),
}


def get_task(name: str) -> Task:
    """The registered task `name`; raises KeyError listing the known tasks."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown task {name!r}; known tasks: {list(TASKS)}") from None


def task_fields() -> tuple[str, ...]:
    """Every logical row field some task reads (for column mapping and validation)."""
    seen: dict[str, None] = {}
    for task in TASKS.values():
        for f in (*task.required_fields, task.question_field, task.instruction_field):
            if f is not None:
                seen[f] = None
    return tuple(seen)
