"""A torch Dataset over several parquet sources: weighted mixing, seeded subsets, lazy decoding.

```python
train_ds = SpeechDataset.from_config("scripts/data_configs/finetune_mixed_tasks.yml", "train",
                                     data_subset=0.1, seed=42)
eval_ds = SpeechDataset.from_config("eval/mustc_tst_common_st.yml", "test")   # fixed prompts
```

Item i is a `Sample` (llava.dataset.sample), or None when its audio fails to decode: the failure is
counted once per row in `dataset.skips` (in the process that decoded it; a row fetched again in a
later epoch is not counted twice) and the collator drops the None and reports it in the batch. Rows
that fail metadata checks were already removed at construction, so None is rare. With `strict=True`
every bad row raises instead. `sample_or_skip(i)` returns a `SkippedRow` (id, reason, source) in
place of None: the trainer fetches items that way, so rows skipped inside loader workers reach the
end-of-run summary, each row counted once.

Public per-item metadata that needs no audio decoding: `row_id(i)` / `row_ids()` (unique: a
duplicate is an error at construction), `task_name(i)` and `reference(i)` (the scoring references).

Prompts: `prompt_format` (a key of `llava.dataset.prompts.PROMPT_FORMATS`, default "original") lays
out the user turn; `instruction_sampling` (fixed | random, default: the layout's) picks the
instruction; evaluation (`train=False`) always takes the fixed one.

Mixing: a partition's `weight` is the expected number of times each of its rows is used per training
epoch (2.0 = every row twice, 0.5 = a seeded half of the rows); weights are ignored outside training.
`data_subset` keeps a seeded fraction of every source (the same rows in every run with the same seed).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from llava.dataset.audio import DEFAULT_SAMPLING_RATE, AudioDecodeError
from llava.dataset.config import ConfigError, DataConfig, load_data_config
from llava.dataset.interleave import InterleaveOptions, interleave
from llava.dataset.prompts import DEFAULT_PROMPT_FORMAT, PromptBank, Prompter
from llava.dataset.sample import Sample
from llava.dataset.seeding import stable_rng
from llava.dataset.skips import BAD_WORD_BOUNDARIES, DataError, SkipCounter, SkippedRow
from llava.dataset.sources import ParquetSource

logger = logging.getLogger(__name__)

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
        prompt_format: str = DEFAULT_PROMPT_FORMAT,
        instruction_sampling: str | None = None,
        no_punctuation: bool = False,
    ):
        """
        Args:
            sources: loaded parquet sources (their weights come from their partition configs).
            prompts: the instruction bank; default the shipped prompts.json.
            train: weighted mixing and (with random sampling) seeded instructions; False: the fixed
                instruction, every row once.
            seed: seeds prompt choice, subsets, weights and interleaving.
            data_subset: keep this fraction (0, 1] of every source; None keeps all.
            interleave_options: add `segments` (mixed speech-text) to every sample; sources must then
                have been loaded with `need_word_boundaries=True`.
            strict: raise on a sample whose audio fails to decode instead of returning None.
            skips: counter shared with the sources (default: a new one).
            prompt_format: user-turn layout, a key of PROMPT_FORMATS (ValueError naming --prompt_format).
            instruction_sampling: fixed | random; None: the layout's default.
            no_punctuation: delete punctuation from transcripts, word-boundary words and targets.
        """
        if data_subset is not None and not 0 < data_subset <= 1:
            raise ValueError(f"data_subset must lie in (0, 1], got {data_subset}")
        self.sources = list(sources)
        self.prompts = prompts if prompts is not None else PromptBank.load()
        self.prompter = Prompter(self.prompts, prompt_format, instruction_sampling)
        self.no_punctuation = no_punctuation
        self.train = train
        self.seed = seed
        self.data_subset = data_subset
        self.interleave_options = interleave_options
        self.strict = strict
        self.skips = skips if skips is not None else SkipCounter()
        self.epoch = 0
        self.sampling_rate = self.sources[0].sampling_rate if self.sources else DEFAULT_SAMPLING_RATE
        self._warned = 0
        self._failed: set[str] = set()  # ids of rows whose failure is already counted (this process)
        self.prompter.check_tasks([s.task_def for s in self.sources])
        self._check_unique_ids()

        parts = []
        for s_idx, src in enumerate(self.sources):
            local = np.arange(len(src), dtype=np.int64)
            # The source's name (`{type}.{task}.{language}:{file stem}`, unique here), not its path: the
            # same corpus in another directory (another study's output, another machine) must give the
            # same subset, or runs that differ only in where their data lives train on different rows.
            key = (src.name,)
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

    def _check_unique_ids(self) -> None:
        """Row ids are `{source name}:{file row}`: two sources with one name would share ids."""
        seen: dict[str, ParquetSource] = {}
        for src in self.sources:
            other = seen.setdefault(src.name, src)
            if other is not src:
                same = other.spec.path.resolve() == src.spec.path.resolve()
                raise DataError(
                    f"duplicate row ids {src.name}:*: {src.spec.field} ({src.spec.path}) and "
                    f"{other.spec.field} ({other.spec.path}) "
                    + (
                        "read the same file for the same task; list it once (use `weight` to repeat it)"
                        if same
                        else "give the same ids; rename one of the files or give the entries different languages"
                    )
                )

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
        prompt_format: str | None = None,
        instruction_sampling: str | None = None,
        no_punctuation: bool = False,
        keep_unreadable: bool = False,
        audio_memo_mb: float = 0.0,
    ) -> SpeechDataset:
        """Build the dataset of one destination (train | eval | test) of a YAML data config.

        `train` defaults to `destination == "train"`. `check_audio` reads every row's audio header at
        load so unreadable/empty audio is skipped (and the real durations used) before training starts.
        `prompt_format` None takes the config's `PROMPT_FORMAT`, else "original". `keep_unreadable`
        (evaluation) keeps rows whose audio cannot be read: they come back as None when fetched.
        `audio_memo_mb` keeps decoded waveforms in memory, up to that many MiB per source (0: off).
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
                keep_unreadable=keep_unreadable,
                audio_memo_bytes=int(audio_memo_mb * 2**20),
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
            prompt_format=prompt_format or cfg.prompt_format or DEFAULT_PROMPT_FORMAT,
            instruction_sampling=instruction_sampling,
            no_punctuation=no_punctuation,
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
        """The source item i comes from."""
        return self.sources[int(self.index[i, 0])]

    def row_id(self, i: int) -> str:
        """The stable id of item i (`{type}.{task}.{language}:{file}:{file row}`)."""
        s, k = (int(x) for x in self.index[i])
        return self.sources[s].row_id(k)

    def row_ids(self) -> list[str]:
        """The ids of every item, in order (a row repeated by a mixing weight repeats its id)."""
        return [self.row_id(i) for i in range(len(self))]

    def task_name(self, i: int) -> str:
        """The task (a key of llava.dataset.tasks.TASKS) of item i."""
        return self.source_of(i).task

    def reference(self, i: int) -> list[str]:
        """The scoring references of item i (SQA: every gold answer; otherwise [target]), read from
        the row's metadata without decoding audio."""
        s, k = (int(x) for x in self.index[i])
        return self.sources[s].reference(k, no_punctuation=self.no_punctuation)

    def _fail(self, src: ParquetSource, row_id: str, reason: str, msg: str, exc: Exception | None) -> None:
        if self.strict:
            raise DataError(msg) from exc
        if row_id not in self._failed:  # a row fetched again (next epoch, weight > 1) counts once
            self._failed.add(row_id)
            self.skips.add(reason, 1, src.name)
            if self._warned < _MAX_WARNINGS:
                self._warned += 1
                logger.warning("skipping sample: %s", msg)

    def __getitem__(self, i: int) -> Sample | None:
        item = self.sample_or_skip(i)
        return None if isinstance(item, SkippedRow) else item

    def sample_or_skip(self, i: int) -> Sample | SkippedRow:
        """Item i, or the marker of a row that cannot be used (its id, reason and source), which the
        collator drops and reports in the batch so that counts are exact across loader workers."""
        s, k = (int(x) for x in self.index[i])
        src = self.sources[s]
        row_id = src.row_id(k)
        rng = stable_rng(self.seed, "prompt", row_id, self.epoch) if self.train else None
        try:
            sample = src.sample(k, self.prompter, rng, no_punctuation=self.no_punctuation)
        except AudioDecodeError as exc:
            self._fail(src, row_id, exc.reason, f"{src.spec.path}: row {row_id}: {exc.reason}: {exc}", exc)
            return SkippedRow(row_id, exc.reason, src.name)
        if self.interleave_options is not None:
            if not sample.word_boundaries:
                # Validated at load; only --no_punctuation can leave a row without any word.
                msg = f"{src.spec.path}: row {row_id}: {BAD_WORD_BOUNDARIES}: no word left to interleave"
                self._fail(src, row_id, BAD_WORD_BOUNDARIES, msg, None)
                return SkippedRow(row_id, BAD_WORD_BOUNDARIES, src.name)
            segments = interleave(
                sample.word_boundaries, sample.audio, row_id, self.interleave_options, self.sampling_rate
            )
            sample = sample.with_changes(segments=segments)
        return sample

    def summary(self) -> str:
        """Sample count per source and the skip summary (of this process)."""
        counts = np.bincount(self.index[:, 0], minlength=len(self.sources)) if len(self.index) else []
        lines = [f"{len(self)} samples"]
        lines += [f"  {src.name} ({src.task}): {int(c)}" for src, c in zip(self.sources, counts)]
        lines.append(self.skips.summary())
        return "\n".join(lines)
