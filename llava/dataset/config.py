"""The YAML data config (the original repo's format) as typed dataclasses.

```yaml
INPUTS_TEXT_LIST: prompts.json            # optional; default: the shipped llava/dataset/prompts.json
DATA:
  - MuSTC:                                # dataset type (see DATASET_TYPES)
      datapath: ${DATA_ROOT}/MUSTC_v1.0   # ${VAR} and ${VAR:-default} are expanded
      task: ST                            # a key of llava.dataset.tasks.TASKS (ASR | ST | SQA | META | INSTRUCT)
      languages: [en-de]
      partitions:
        train:                            # parquet stem
          amount: ":100%"                 # ":X%" or "X1:X2%" (percent), "X1:X2" (rows)
          min_duration: 1
          max_duration: 45
          destination: train              # train | eval | test
          weight: 1.0                     # optional mixing weight
          name: dev-clean                 # optional: the set's name in training logs (eval_<name>_loss)
  - Parquet:                              # generic files: say where they are and what columns mean
      datapath: ${DATA_ROOT}/my_corpus
      task: ASR
      files: "{partition}-*.parquet"      # templates relative to datapath: {partition} {src} {tgt} {lang}, globs
      columns: {transcript: text}         # logical field -> column (default: same name)
      partitions: {train: {destination: train}}
```

`files` and `columns` may also override the defaults of the named types. Keys the original configs
carried without effect here (`additional_args`, `audio_nwp`, `OUTPUTS_TEXT_LIST`) are accepted; a
dataset's `no_punctuation: true` strips punctuation from its texts (as `--no_punctuation` does for all).
The optional top-level `PROMPT_FORMAT` names the prompt layout of the config's data (a key of
`llava.dataset.prompts.PROMPT_FORMATS`; a command-line `--prompt_format` takes precedence).

The original repo's default `INPUTS_TEXT_LIST` (`llava/dataset/INPUTS_TEXT_LIST.json`) was never
published: when a config names exactly that file and it does not exist, the shipped prompts are used
(with a warning), so the original configs load unchanged.

Everything is validated here, before any data is read: a malformed config raises `ConfigError` naming
the file and the field (`data.yml: DATA[1].MuSTC.partitions.train.amount: ...`), and every parquet
file the config refers to must exist. Relative paths resolve against the YAML file's folder first,
then against the working directory (the original code used the working directory).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llava.dataset.amount import FULL, AmountSlice, parse_amount
from llava.dataset.config_values import (
    ConfigError,
    Ctx,
    check_size,
    expand_env,
    number,
    resolve_path,
)
from llava.dataset.formats import DATASET_TYPES, FIELDS, GENERIC_TYPE, TASKS, DatasetType
from llava.dataset.tasks import TASKS as TASK_REGISTRY

__all__ = [
    "DATASET_TYPES",
    "DEFAULT_PROMPTS_PATH",
    "DESTINATIONS",
    "FIELDS",
    "FULL",
    "GENERIC_TYPE",
    "TASKS",
    "AmountSlice",
    "ConfigError",
    "DataConfig",
    "DatasetEntry",
    "DatasetType",
    "PartitionConfig",
    "SourceSpec",
    "load_data_config",
    "parse_amount",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS_PATH = Path(__file__).with_name("prompts.json")
# The instruction file the original configs name; it was never published (see the module docstring).
ORIGINAL_PROMPTS_PATH = "llava/dataset/INPUTS_TEXT_LIST.json"
DESTINATIONS = ("train", "eval", "test")


# Keys the original configs may carry that have no effect here.
_IGNORED_DATASET_KEYS = ("additional_args", "audio_nwp", "INPUTS_TEXT_LIST", "OUTPUTS_TEXT_LIST")
_DATASET_KEYS = (
    "datapath",
    "task",
    "languages",
    "partitions",
    "files",
    "columns",
    "no_punctuation",
    *_IGNORED_DATASET_KEYS,
)
_PARTITION_KEYS = ("amount", "min_duration", "max_duration", "destination", "weight", "name")
# A partition's `name:` becomes part of metric names (eval_<name>_loss): keep it to safe characters.
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOP_KEYS = ("DATA", "INPUTS_TEXT_LIST", "OUTPUTS_TEXT_LIST", "PROMPT_FORMAT")


# ----------------------------------------------------------------------------- parsed config
@dataclass(frozen=True)
class PartitionConfig:
    """One parquet stem of a dataset entry and how much of it to use."""

    name: str  # parquet stem, e.g. "train", "tst-COMMON"
    amount: AmountSlice  # row range taken before any filtering
    min_duration: float | None  # seconds, inclusive; None = no bound
    max_duration: float | None  # seconds, inclusive; None = no bound
    destination: str  # train | eval | test
    weight: float = 1.0  # mixing weight: expected uses of each row per training epoch
    # The `name:` key: names the set in training logs (eval partitions are evaluated and logged per
    # name, `eval_<name>_loss`; partitions given one name are pooled); None: a name from the source.
    set_name: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """One parquet file to read, fully resolved: what the dataset code consumes."""

    dataset_type: str  # key of DATASET_TYPES
    task: str  # key of llava.dataset.tasks.TASKS
    path: Path  # the parquet file (exists)
    partition: PartitionConfig
    columns: Mapping[str, str]  # logical field -> parquet column
    source_language: str | None  # e.g. "en"
    target_language: str | None  # e.g. "de" (ST); None for monolingual data
    field: str  # config location for messages, e.g. "data.yml: DATA[0].MuSTC.partitions.train"
    # The file's part of the row ids: its stem, or its path below datapath (no suffix) when a globbed
    # partition matched two files with the same stem, so ids are unique within a partition.
    file_key: str = ""
    no_punctuation: bool = False  # strip [^\w\s] from this source's texts

    @property
    def language(self) -> str:
        """The language entry as written in the config ("en" or "en-de")."""
        src = self.source_language or ""
        return f"{src}-{self.target_language}" if self.target_language else src

    @property
    def name(self) -> str:
        """Label for sample ids and skip summaries, `{type}.{task}.{language}:{file key}`: unique when one
        file serves two tasks (MuSTC ASR and ST), two language pairs share a stem (en-de/train) or a
        glob matches two files with the same stem (`a/train`, `b/train`)."""
        return f"{self.dataset_type}.{self.task}.{self.language}:{self.file_key or self.path.stem}"


@dataclass
class DatasetEntry:
    """One item of the `DATA` list."""

    dataset_type: str  # key of DATASET_TYPES
    datapath: Path  # root folder of the dataset
    task: str  # key of llava.dataset.tasks.TASKS
    languages: list[str]  # "en", or "src-tgt" pairs
    partitions: list[PartitionConfig]
    columns: dict[str, str]  # logical field -> parquet column (type defaults + overrides)
    file_templates: tuple[str, ...]  # where the parquet files are, relative to datapath
    index: int  # position in DATA, for messages
    no_punctuation: bool = False  # strip [^\w\s] from the texts of this dataset


@dataclass
class DataConfig:
    """A parsed data config: prompt file, dataset entries and the resolved parquet sources."""

    path: Path  # the YAML file
    prompts_path: Path  # task -> instruction texts (JSON)
    outputs_text_list: Path | None  # accepted for compatibility; unused
    datasets: list[DatasetEntry]
    sources: list[SourceSpec] = field(default_factory=list)
    prompt_format: str | None = None  # the config's PROMPT_FORMAT; None: the caller's default

    def for_destination(self, destination: str) -> list[SourceSpec]:
        """The sources of one destination; for `test`, every task must have a metric (ConfigError)."""
        if destination not in DESTINATIONS:
            raise ValueError(f"unknown destination {destination!r}; known: {list(DESTINATIONS)}")
        specs = [s for s in self.sources if s.partition.destination == destination]
        if destination == "test":
            self.check_scorable(specs)
        return specs

    def check_scorable(self, specs: list[SourceSpec]) -> None:
        """A test partition whose task names no metric cannot be scored: ConfigError naming the field."""
        for spec in specs:
            if not TASK_REGISTRY[spec.task].metrics:
                scorable = [n for n, t in TASK_REGISTRY.items() if t.metrics]
                where = spec.field.rsplit(".partitions.", 1)[0]
                raise ConfigError(
                    f"{where}.task: task {spec.task!r} has no metric, so its test partition "
                    f"{spec.partition.name!r} cannot be scored; tasks with metrics: {scorable}"
                )


# ----------------------------------------------------------------------------- parsing
def _split_language(lang: str) -> tuple[str, str | None]:
    src, _, tgt = lang.partition("-")
    return src, (tgt or None)


def _parse_partition(name: Any, spec: Any, ctx: Ctx, where: str) -> PartitionConfig:
    if not isinstance(spec, dict):
        raise ctx.error(where, f"expected a mapping with keys {list(_PARTITION_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(_PARTITION_KEYS))
    if unknown:
        raise ctx.error(f"{where}.{unknown[0]}", f"unknown key; known keys: {list(_PARTITION_KEYS)}")
    try:
        amount = parse_amount(spec.get("amount", ":100%"))
    except ValueError as exc:
        raise ctx.error(f"{where}.amount", str(exc)) from None
    lo = number(spec.get("min_duration"), ctx, f"{where}.min_duration")
    hi = number(spec.get("max_duration"), ctx, f"{where}.max_duration")
    if lo is not None and hi is not None and lo > hi:
        raise ctx.error(f"{where}.min_duration", f"min_duration {lo:g} is larger than max_duration {hi:g}")
    if "destination" not in spec:
        raise ctx.error(f"{where}.destination", f"missing; one of {list(DESTINATIONS)}")
    dest = spec["destination"]
    if dest not in DESTINATIONS:
        raise ctx.error(f"{where}.destination", f"expected one of {list(DESTINATIONS)}, got {dest!r}")
    weight = number(spec.get("weight", 1.0), ctx, f"{where}.weight", allow_none=False, positive=True)
    set_name = spec.get("name")
    if set_name is not None and not (isinstance(set_name, str) and _SET_NAME.fullmatch(set_name)):
        raise ctx.error(
            f"{where}.name",
            f"expected a name of letters, digits, '_', '.', '-' (e.g. dev-clean), got {set_name!r}",
        )
    return PartitionConfig(str(name), amount, lo, hi, dest, weight, set_name)


def _parse_entry(item: Any, index: int, ctx: Ctx, base: Path) -> DatasetEntry:
    where = f"DATA[{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise ctx.error(
            where, f"expected a mapping with one dataset type key ({list(DATASET_TYPES)}), got {item!r}"
        )
    ((type_name, body),) = item.items()
    if type_name not in DATASET_TYPES:
        raise ctx.error(where, f"unknown dataset type {type_name!r}; known types: {list(DATASET_TYPES)}")
    dtype = DATASET_TYPES[type_name]
    where = f"{where}.{type_name}"
    if not isinstance(body, dict):
        raise ctx.error(where, f"expected a mapping, got {body!r}")
    unknown = sorted(set(body) - set(_DATASET_KEYS))
    if unknown:
        raise ctx.error(f"{where}.{unknown[0]}", f"unknown key; known keys: {list(_DATASET_KEYS)}")

    if not isinstance(body.get("datapath"), str) or not body["datapath"].strip():
        raise ctx.error(f"{where}.datapath", f"expected a folder path, got {body.get('datapath')!r}")
    datapath = resolve_path(body["datapath"], base)

    task = body.get("task")
    if task not in dtype.tasks:
        raise ctx.error(f"{where}.task", f"expected one of {list(dtype.tasks)} for {type_name}, got {task!r}")

    languages = body.get("languages", ["en"] if not dtype.needs_pair else None)
    if isinstance(languages, str):
        languages = [languages]
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
        raise ctx.error(f"{where}.languages", f"expected a list like [en-de], got {languages!r}")
    for i, lang in enumerate(languages):
        src, tgt = _split_language(lang)
        if not re.fullmatch(r"[A-Za-z_]+(-[A-Za-z_]+)?", lang):
            raise ctx.error(f"{where}.languages[{i}]", f'expected "xx" or "src-tgt", got {lang!r}')
        if (dtype.needs_pair or task == "ST") and tgt is None:
            raise ctx.error(
                f"{where}.languages[{i}]", f'{type_name}/{task} needs a "src-tgt" pair, got {lang!r}'
            )

    columns = dict(dtype.columns)
    if "columns" in body:
        if not isinstance(body["columns"], dict):
            raise ctx.error(
                f"{where}.columns", f"expected a mapping field -> column, got {body['columns']!r}"
            )
        for key, col in body["columns"].items():
            if key not in FIELDS:
                raise ctx.error(f"{where}.columns.{key}", f"unknown field; known fields: {list(FIELDS)}")
            if not isinstance(col, str) or not col:
                raise ctx.error(f"{where}.columns.{key}", f"expected a column name, got {col!r}")
            columns[key] = col

    templates = dtype.file_templates
    if "files" in body:
        files = body["files"]
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
            raise ctx.error(
                f"{where}.files", f'expected a template like "{{partition}}.parquet", got {body["files"]!r}'
            )
        templates = tuple(files)
        for i, template in enumerate(templates):
            try:
                template.format(src="xx", tgt="yy", lang="xx-yy", partition="p")
            except (KeyError, IndexError, ValueError) as exc:
                raise ctx.error(
                    f"{where}.files[{i}]",
                    f"bad template {template!r} ({exc}); placeholders: {{src}} {{tgt}} {{lang}} {{partition}}",
                ) from None

    no_punctuation = body.get("no_punctuation", False)
    if not isinstance(no_punctuation, bool):
        raise ctx.error(f"{where}.no_punctuation", f"expected true or false, got {no_punctuation!r}")

    parts = body.get("partitions")
    if not isinstance(parts, dict) or not parts:
        raise ctx.error(
            f"{where}.partitions", f"expected a non-empty mapping of parquet stems, got {parts!r}"
        )
    partitions = [_parse_partition(n, s, ctx, f"{where}.partitions.{n}") for n, s in parts.items()]
    return DatasetEntry(
        type_name, datapath, task, languages, partitions, columns, templates, index, no_punctuation
    )


def _find_files(entry: DatasetEntry, lang: str, part: PartitionConfig, ctx: Ctx, where: str) -> list[Path]:
    src, tgt = _split_language(lang)
    tried: list[str] = []
    for template in entry.file_templates:
        rel = template.format(src=src, tgt=tgt or "", lang=lang, partition=part.name)
        full = rel if os.path.isabs(rel) else str(entry.datapath / rel)
        if glob.has_magic(full):
            matches = sorted(Path(m) for m in glob.glob(full))
            if matches:
                return matches
        elif Path(full).is_file():
            return [Path(full)]
        tried.append(full)
    also = f" (also tried {', '.join(tried[1:])})" if len(tried) > 1 else ""
    raise ctx.error(where, f"parquet file not found: {tried[0]}{also}")


def load_data_config(path: str | os.PathLike, *, check_files: bool = True) -> DataConfig:
    """Parse and validate a YAML data config; resolve (and, by default, check) every parquet file."""
    path = Path(path)
    ctx = Ctx(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data config not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ctx.error("", f"invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ctx.error("", f"expected a mapping with keys {list(_TOP_KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ctx.error(unknown[0], f"unknown key; known keys: {list(_TOP_KEYS)}")
    check_size(raw, ctx)
    raw = expand_env(raw, ctx, "")
    base = path.resolve().parent

    prompts_path = DEFAULT_PROMPTS_PATH
    if raw.get("INPUTS_TEXT_LIST") is not None:
        if not isinstance(raw["INPUTS_TEXT_LIST"], str):
            raise ctx.error(
                "INPUTS_TEXT_LIST", f"expected a path to a JSON file, got {raw['INPUTS_TEXT_LIST']!r}"
            )
        prompts_path = resolve_path(raw["INPUTS_TEXT_LIST"], base)
        if not prompts_path.is_file():
            if Path(raw["INPUTS_TEXT_LIST"]).as_posix().lstrip("./") != ORIGINAL_PROMPTS_PATH:
                raise ctx.error("INPUTS_TEXT_LIST", f"prompt file not found: {prompts_path}")
            logger.warning(
                "%s: INPUTS_TEXT_LIST %s (the original repo's unpublished file) not found; using %s",
                path.name,
                raw["INPUTS_TEXT_LIST"],
                DEFAULT_PROMPTS_PATH,
            )
            prompts_path = DEFAULT_PROMPTS_PATH
    prompt_format = raw.get("PROMPT_FORMAT")
    if prompt_format is not None:
        from llava.dataset.prompts import PROMPT_FORMATS  # prompts imports this module

        if prompt_format not in PROMPT_FORMATS:
            raise ctx.error(
                "PROMPT_FORMAT", f"unknown prompt format {prompt_format!r}; known: {list(PROMPT_FORMATS)}"
            )
    outputs = raw.get("OUTPUTS_TEXT_LIST")
    outputs_path = resolve_path(outputs, base) if isinstance(outputs, str) else None

    data = raw.get("DATA")
    if not isinstance(data, list) or not data:
        raise ctx.error("DATA", f"expected a non-empty list of datasets, got {data!r}")
    entries = [_parse_entry(item, i, ctx, base) for i, item in enumerate(data)]

    sources: list[SourceSpec] = []
    for entry in entries:
        for lang in entry.languages:
            src, tgt = _split_language(lang)
            for part in entry.partitions:
                where = f"DATA[{entry.index}].{entry.dataset_type}.partitions.{part.name}"
                if check_files:
                    files = _find_files(entry, lang, part, ctx, where)
                else:
                    rel = entry.file_templates[0].format(
                        src=src, tgt=tgt or "", lang=lang, partition=part.name
                    )
                    files = [entry.datapath / rel]
                keys = _file_keys(files, entry.datapath)
                for f, key in zip(files, keys):
                    sources.append(
                        SourceSpec(
                            dataset_type=entry.dataset_type,
                            task=entry.task,
                            path=f,
                            partition=part,
                            columns=entry.columns,
                            source_language=src,
                            target_language=tgt,
                            field=f"{path.name}: {where}",
                            file_key=key,
                            no_punctuation=entry.no_punctuation,
                        )
                    )
    return DataConfig(path, prompts_path, outputs_path, entries, sources, prompt_format)


def _file_keys(files: list[Path], datapath: Path) -> list[str]:
    """Per file of one partition, its part of the row ids: the stem, or - when two files share a stem -
    the path below `datapath` without suffix (distinct paths give distinct keys)."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    keys = []
    for f in files:
        try:
            rel = f.resolve().relative_to(datapath.resolve())
        except ValueError:  # an absolute template outside datapath
            rel = f.resolve()
        keys.append(rel.with_suffix("").as_posix())
    return keys
