"""How a built base-model directory is stamped with its settings, reused on a re-run and put in place.

A model directory is trained under a private temporary name, stamped (its trainer's report plus the
budget and seed it was built with, in `REPORT_NAME`) and renamed when complete; a later build with the
same seed and the same budget fields of that model (`PART_FIELDS`) reuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from llava.demo.base_models.budgets import Budget
from llava.fileio import atomic_write_text, usual_mode

REPORT_NAME = "train_report.json"  # written last into a model directory by its trainer


class CorpusError(ValueError):
    """A missing corpus file or column; the message names the file."""


# The budget fields each model depends on: a model is reused when these (and the seed) are unchanged.
_TEXT_LLM_FIELDS = (
    "vocab_size",
    "llm_args",
    "llm_config",
    "chat_copies",
    "plain_lines",
    "scrambled",
    "task_copies",
    "stretch_frac",
    "stretch_max",
    "passage_sentences",
    "passage_openings_only",
    "max_dev",
    "topline_n",
    "eval_n",
)
_SPELLED_FIELDS = ("spell_steps", "spell_args", "spell_copies", "spell_repeat")
_PASSAGE_FIELDS = ("passage_steps", "passage_args", "passage_copies")
# Keyed by directory name: the LLM's earlier phases (llm_recipe.llm_phases) are kept beside the final `llm`.
PART_FIELDS = {
    "llm_text": _TEXT_LLM_FIELDS,  # the first LLM phase, when a later one follows it
    "llm_spelled": (*_TEXT_LLM_FIELDS, *_SPELLED_FIELDS),  # the spelled phase, when the passage one follows
    "llm": (*_TEXT_LLM_FIELDS, *_SPELLED_FIELDS, *_PASSAGE_FIELDS),
    "encoder": ("encoder_args", "encoder_config", "encoder_max_train", "max_dev"),
}  # fmt: skip


def finished(model_dir: Path, stamp: dict) -> dict | None:
    """The saved report of a complete model directory built with the same settings, else None.

    Settings are the seed and the budget fields that model depends on (`PART_FIELDS`); a budget
    renamed, or differing only in the other model's fields, matches.
    """
    try:
        report = json.loads((model_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    build = report.get("build")
    if not isinstance(build, dict) or build.get("seed") != stamp.get("seed"):
        return None
    keys = PART_FIELDS[model_dir.name]
    return report if same_spec(build.get("spec") or {}, stamp.get("spec") or {}, keys) else None


def same_spec(saved: dict, current: dict, keys: Sequence[str]) -> bool:
    """Budget contents equal, a field missing on one side counting as its default (fields added later)."""
    defaults = {f.name: f.default for f in fields(Budget) if f.default is not MISSING}
    defaults.update({f.name: f.default_factory() for f in fields(Budget) if f.default_factory is not MISSING})
    return all(saved.get(k, defaults.get(k)) == current.get(k, defaults.get(k)) for k in keys)


@contextlib.contextmanager
def staging(out: Path, prefix: str) -> Iterator[Path]:
    """A private temporary directory in `out` for a model being built; removed if the build fails."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=prefix))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install(tmp: Path, final: Path) -> None:
    """Move a finished temporary model directory into place (replacing an outdated one)."""
    # Temporary directories and files are created private (0700/0600); give them the usual modes.
    os.chmod(tmp, usual_mode(directory=True))
    for f in tmp.iterdir():
        os.chmod(f, usual_mode())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def add_stamp(model_dir: Path, report: dict, stamp: dict) -> dict:
    report = {"build": stamp, **report}
    write_json(model_dir / REPORT_NAME, report)
    return report
