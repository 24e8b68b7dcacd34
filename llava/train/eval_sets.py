"""Named validation sets: every `destination: eval` partition evaluated and logged on its own.

NeMo's `validation_ds.names`, in the Trainer's convention for several evaluation sets: the Trainer's
`eval_dataset` becomes a dict name -> dataset, and each set's metrics carry its name
(`eval_<name>_loss`, and each objective term as `eval_<name>_<term>`).

A set's name is the partition's `name:` in the data config when given (partitions sharing a name are
pooled into one set), otherwise `{dataset type}_{task}_{language}_{partition}`, as evaluation names
its test sets (e.g. `MuSTC_ST_en-de_dev`). With a single name the plain dataset is returned, so a run
with one validation set still logs `eval_loss`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch.utils.data import Dataset, Subset

from llava.dataset.config import SourceSpec

logger = logging.getLogger(__name__)

__all__ = ["check_best_model_metric", "eval_set_name", "eval_set_names", "split_eval_sets"]


def eval_set_name(spec: SourceSpec) -> str:
    """The name of the validation set a source belongs to (see the module docstring)."""
    if spec.partition.set_name:
        return spec.partition.set_name
    parts = (spec.dataset_type, spec.task, spec.language or "xx", spec.partition.name)
    return "_".join(x.replace(os.sep, "-").replace(" ", "-") for x in parts)


def eval_set_names(specs: list[SourceSpec]) -> list[str]:
    """The validation-set name of each source (in order): its partition's `name:`, or the derived
    name, numbered `_2`, `_3`... when two partitions of the config would share one."""
    names: list[str] = []
    derived: dict[tuple, str] = {}  # (field, languages) of a partition -> its derived name
    taken: dict[str, tuple] = {}  # derived name -> the partition that has it
    for spec in specs:
        if spec.partition.set_name:
            names.append(spec.partition.set_name)
            continue
        key = (spec.field, spec.source_language, spec.target_language)  # a globbed partition is one set
        if key not in derived:
            base = name = eval_set_name(spec)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            derived[key], taken[name] = name, key
        names.append(derived[key])
    return names


def split_eval_sets(dataset: Any, max_samples: int | None = None) -> Dataset | dict[str, Dataset]:
    """The validation data of a `SpeechDataset` as one dataset per named set (a dict, in config
    order), or the dataset itself when there is one set. `max_samples` caps each set."""
    names = eval_set_names([src.spec for src in dataset.sources])
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(dataset.index[:, 0].tolist()):
        groups.setdefault(names[s], []).append(i)
    if len(groups) <= 1:
        if max_samples and len(dataset) > max_samples:
            return Subset(dataset, range(max_samples))
        return dataset
    sets = {name: Subset(dataset, idx[:max_samples] if max_samples else idx) for name, idx in groups.items()}
    logger.info("validation sets: %s", ", ".join(f"{k} ({len(v)})" for k, v in sets.items()))
    return sets


def check_best_model_metric(training_args: Any, set_names: list[str]) -> None:
    """With several validation sets there is no plain `eval_loss`: `--load_best_model_at_end` needs
    `--metric_for_best_model` to name one set's metric (ValueError listing them, before training)."""
    sets = list(dict.fromkeys(set_names))
    if len(sets) <= 1 or not getattr(training_args, "load_best_model_at_end", False):
        return
    metric = training_args.metric_for_best_model or "loss"
    full = metric if metric.startswith("eval_") else f"eval_{metric}"
    if not any(full.startswith(f"eval_{name}_") for name in sets):
        choices = [f"eval_{name}_loss" for name in sets]
        raise ValueError(
            f"--metric_for_best_model {metric}: with several validation sets each metric carries its set's "
            f"name; choose one, e.g. {choices}"
        )
