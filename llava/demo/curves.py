"""Teacher-forced dev NLL per task: the study's most sensitive measure of what stage 2 has learned.

Generation metrics (WER, BLEU, F1) stay near their floor until a model is fairly good; the mean
negative log-likelihood of the reference targets given the audio and prompt moves from the first
steps, so it separates pretraining variants early and gives the stage-2 learning curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from llava.constants import IGNORE_INDEX
from llava.dataset.collator import SpeechCollator
from llava.dataset.dataset import SpeechDataset
from llava.train.objectives.base import StepInputs
from llava.train.objectives.nwp import NwpObjective

NO_LENGTH_LIMIT = 1 << 30  # dev sequences are never truncated


def dev_rows(
    data_config: str | Path, limit_per_task: int
) -> tuple[SpeechDataset, dict[str, list[int]], str | None]:
    """The eval-destination rows of a data config, the first `limit_per_task` of each task, and the
    system turn of the config's prompt layout."""
    from llava.dataset.config import load_data_config
    from llava.dataset.prompts import DEFAULT_PROMPT_FORMAT, resolve_system_prompt

    cfg = load_data_config(data_config)
    ds = SpeechDataset.from_config(cfg, "eval", train=False)
    rows: dict[str, list[int]] = {}
    for i in range(len(ds)):
        task = ds.task_name(i)
        if len(rows.setdefault(task, [])) < limit_per_task:
            rows[task].append(i)
    system = resolve_system_prompt(None, getattr(cfg, "prompt_format", None) or DEFAULT_PROMPT_FORMAT)
    return ds, rows, system


def dev_batches(
    model: Any,
    tokenizer: Any,
    dataset: SpeechDataset,
    rows: dict[str, list[int]],
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per task: the collated dev batches of `rows[task]`, built once and scored at every curve point.

    The batches come from the training collator (chat template, labels on the target and its
    end-of-turn token; `system_prompt` as the layout of `dev_rows` gives it). Rows are batched in
    order of duration, so a batch pads little; the NLL is pooled over tokens, so the order does not
    change it. A row that cannot be read is left out (the dataset counts it as skipped)."""
    collator = SpeechCollator(
        tokenizer,
        model.num_audio_tokens,
        mode="chat",
        max_length=NO_LENGTH_LIMIT,
        system_prompt=system_prompt,
    )
    durations = getattr(dataset, "durations", None)
    out: dict[str, list[dict[str, Any]]] = {}
    for task, indices in rows.items():
        ordered = sorted(indices, key=lambda i: float(durations[i])) if durations is not None else indices
        batches = []
        for chunk in _chunks(ordered, batch_size):
            samples = [s for s in (dataset[i] for i in chunk) if s is not None]
            if samples:
                batches.append(collator(samples))
        out[task] = batches
    return out


@torch.no_grad()
def dev_nll(
    model: Any,
    batches: dict[str, list[dict[str, Any]]],
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Per task: mean NLL per target token (nats) over the `dev_batches`, and the token count: the
    training objective (`NwpObjective`) on held-out rows, pooled over tokens; `on_batch(rows)` is
    called after each batch."""
    nwp = NwpObjective()
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    try:
        for task, task_batches in batches.items():
            total, count = 0.0, 0
            for batch in task_batches:
                n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                if n:  # the objective's mean over the batch's n target tokens, back to a sum
                    total += float(nwp(model, StepInputs(model, batch))["nwp"]) * n
                    count += n
                if on_batch is not None:
                    on_batch(len(batch["input_ids"]))
            out[task] = {"nll": total / count if count else math.nan, "tokens": count}
    finally:
        model.train(was_training)
    return out


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def curve_every(total_steps: int, points: int) -> int:
    """The checkpoint interval (`--save_steps`) giving about `points` curve points."""
    if total_steps < 1 or points < 1:
        raise ValueError(f"need total_steps >= 1 and points >= 1, got {total_steps}, {points}")
    return max(1, total_steps // points)


def curve_steps(total_steps: int, points: int) -> list[int]:
    """The steps a stage-2 run is measured at: the multiples of `curve_every` below `total_steps`
    (its intermediate checkpoints) and `total_steps` itself (the final weights). Step 0, the stage-1
    projector, is measured separately. E.g. (60, 4) -> [15, 30, 45, 60]; (50, 4) -> [12, 24, 36, 48, 50]."""
    every = curve_every(total_steps, points)
    return [k for k in range(every, total_steps, every)] + [total_steps]
