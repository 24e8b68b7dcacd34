"""A torch Dataset over several parquet sources: weighted mixing, seeded subsets, lazy decoding.

```python
train_ds = SpeechDataset.from_config("scripts/data_configs/finetune_mixed_tasks.yml", "train",
                                     data_subset=0.1, seed=42)
eval_ds = SpeechDataset.from_config("eval/mustc_tst_common_st.yml", "test")   # fixed prompts
```

Item i is a Sample (docs/architecture.md), or None when its audio fails to decode: the failure is
counted in `dataset.skips` (in the process that decoded it) and the collator drops the None and
reports it in the batch. Rows that fail metadata checks were already removed at construction, so
None is rare. With `strict=True` every bad row raises instead.

Mixing: a partition's `weight` is the expected number of times each of its rows is used per training
epoch (2.0 = every row twice, 0.5 = a seeded half of the rows); weights are ignored outside training.
`data_subset` keeps a seeded fraction of every source (the same rows in every run with the same seed).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from llava.dataset.audio import DEFAULT_SAMPLING_RATE, AudioDecodeError
from llava.dataset.config import ConfigError, DataConfig, load_data_config
from llava.dataset.interleave import InterleaveOptions, interleave
from llava.dataset.prompts import PromptBank
from llava.dataset.seeding import stable_rng
from llava.dataset.skips import DataError, SkipCounter
from llava.dataset.sources import ParquetSource

logger = logging.getLogger(__name__)

# Tasks whose prompts always come from the prompt bank (SQA and INSTRUCT usually carry their own).
_BANK_TASKS = ("ASR", "ST")
_MAX_WARNINGS = 20


class SpeechDataset(Dataset):
    """Samples from several `ParquetSource`s, mixed by weight, optionally subset and interleaved."""

    def __init__(
        self,
        sources: Sequence[ParquetSource],
        prompts: PromptBank | None = None,
        *,
        train: bool = True,
        seed: int = 42,
        data_subset: float | None = None,
        interleave_options: InterleaveOptions | None = None,
        strict: bool = False,
        skips: SkipCounter | None = None,
    ):
        """
        Args:
            sources: loaded parquet sources (their weights come from their partition configs).
            prompts: the prompt bank; default the shipped prompts.json.
            train: seeded random prompts and weighted mixing; False: first prompt, every row once.
            seed: seeds prompt choice, subsets, weights and interleaving.
            data_subset: keep this fraction (0, 1] of every source; None keeps all.
            interleave_options: add `segments` (mixed speech-text) to every sample; sources must then
                have been loaded with `need_word_boundaries=True`.
            strict: raise on a sample whose audio fails to decode instead of returning None.
            skips: counter shared with the sources (default: a new one).
        """
        if data_subset is not None and not 0 < data_subset <= 1:
            raise ValueError(f"data_subset must lie in (0, 1], got {data_subset}")
        self.sources = list(sources)
        self.prompts = prompts if prompts is not None else PromptBank.load()
        self.train = train
        self.seed = seed
        self.data_subset = data_subset
        self.interleave_options = interleave_options
        self.strict = strict
        self.skips = skips if skips is not None else SkipCounter()
        self.epoch = 0
        self.sampling_rate = self.sources[0].sampling_rate if self.sources else DEFAULT_SAMPLING_RATE
        self._warned = 0
        for task in sorted({s.task for s in self.sources}):
            if task in _BANK_TASKS and task not in self.prompts.tasks:
                raise ConfigError(
                    f"{self.prompts.source}: no prompts for task {task!r}; tasks: {self.prompts.tasks}"
                )

        parts = []
        for s_idx, src in enumerate(self.sources):
            local = np.arange(len(src), dtype=np.int64)
            key = (src.spec.field, str(src.spec.path))
            if data_subset is not None and len(local):
                k = max(1, round(len(local) * data_subset))
                rng = stable_rng(seed, "subset", *key)
                local = np.sort(rng.choice(local, size=k, replace=False))
            weight = src.spec.partition.weight
            if train and weight != 1.0 and len(local):
                whole, frac = int(math.floor(weight)), weight - math.floor(weight)
                rng = stable_rng(seed, "weight", *key)
                extra = rng.choice(local, size=round(frac * len(local)), replace=False)
                local = np.concatenate([np.tile(local, whole), np.sort(extra)])
            parts.append(np.stack([np.full(len(local), s_idx, dtype=np.int64), local], axis=1))
        self.index = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)  # [M, 2]
        self.durations = (
            np.concatenate([self.sources[s].durations[ks] for s, ks in self._groups()])
            if len(self.index)
            else np.zeros(0)
        )  # [M] seconds, for the duration-bucketed sampler

    def _groups(self):
        # Rows are stored source by source, so the per-source runs are contiguous.
        bounds = np.flatnonzero(np.diff(self.index[:, 0])) + 1
        for run in np.split(self.index, bounds):
            yield int(run[0, 0]), run[:, 1]

    # ------------------------------------------------------------------------- construction
    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | DataConfig,
        destination: str = "train",
        *,
        train: bool | None = None,
        seed: int = 42,
        data_subset: float | None = None,
        interleave_options: InterleaveOptions | None = None,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        strict: bool = False,
        check_audio: bool = True,
    ) -> SpeechDataset:
        """Build the dataset of one destination (train | eval | test) of a YAML data config.

        `train` defaults to `destination == "train"`. `check_audio` reads every row's audio header at
        load so unreadable/empty audio is skipped before training starts.
        """
        cfg = config if isinstance(config, DataConfig) else load_data_config(config)
        specs = cfg.for_destination(destination)
        if not specs:
            raise ConfigError(f"{cfg.path.name}: no partition has destination {destination!r}")
        prompts = PromptBank.load(cfg.prompts_path)
        skips = SkipCounter()
        sources = [
            ParquetSource(
                spec,
                skips=skips,
                strict=strict,
                check_audio=check_audio,
                need_word_boundaries=interleave_options is not None,
                sampling_rate=sampling_rate,
            )
            for spec in specs
        ]
        ds = cls(
            sources,
            prompts,
            train=destination == "train" if train is None else train,
            seed=seed,
            data_subset=data_subset,
            interleave_options=interleave_options,
            strict=strict,
            skips=skips,
        )
        if len(ds) == 0:
            raise DataError(f"{cfg.path}: no usable {destination} samples; {skips.summary()}")
        logger.info("%s [%s]: %d samples; %s", cfg.path.name, destination, len(ds), skips.summary())
        return ds

    # ------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Training prompts are redrawn per epoch (deterministically)."""
        self.epoch = int(epoch)

    def source_of(self, i: int) -> ParquetSource:
        return self.sources[int(self.index[i, 0])]

    def task_of(self, i: int) -> str:
        return self.source_of(i).task

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        s, k = (int(x) for x in self.index[i])
        src = self.sources[s]
        rng = stable_rng(self.seed, "prompt", src.row_id(k), self.epoch) if self.train else None
        try:
            sample = src.sample(k, self.prompts, rng)
        except AudioDecodeError as exc:
            msg = f"{src.spec.path}: row {src.row_id(k)}: {exc.reason}: {exc}"
            if self.strict:
                raise DataError(msg) from exc
            self.skips.add(exc.reason, 1, src.name)
            if self._warned < _MAX_WARNINGS:
                self._warned += 1
                logger.warning("skipping sample: %s", msg)
            return None
        if self.interleave_options is not None:
            if not sample["word_boundaries"]:
                raise DataError(f"{src.spec.path}: row {sample['id']}: interleaving needs word_boundaries")
            sample["segments"] = interleave(
                sample["word_boundaries"],
                sample["audio"],
                sample["id"],
                self.interleave_options,
                self.sampling_rate,
            )
        return sample

    def summary(self) -> str:
        """Sample count per source and the skip summary (of this process)."""
        counts = np.bincount(self.index[:, 0], minlength=len(self.sources)) if len(self.index) else []
        lines = [f"{len(self)} samples"]
        lines += [f"  {src.name} ({src.task}): {int(c)}" for src, c in zip(self.sources, counts)]
        lines.append(self.skips.summary())
        return "\n".join(lines)
