"""How the training loader reaches the dataset: epoch-tagged batches, rows that may come back as
skips, and per-item durations for the duration-bucketed sampler."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset
from transformers import TrainerCallback

from llava.dataset.sampler import DurationBatchSampler


def durations_of(dataset: Dataset) -> Any | None:
    """Per-item durations of a SpeechDataset (or a Subset of one); None for other datasets."""
    if isinstance(dataset, Subset):
        inner = durations_of(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    return getattr(dataset, "durations", None)


class EpochBatches:
    """A batch sampler yielding `(epoch, index)` pairs. Persistent workers keep their own copy of the
    dataset, which `set_epoch` in the main process never reaches: the epoch travels with the indices."""

    def __init__(self, sampler: DurationBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ([(epoch, i) for i in batch] for batch in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class RowItems(Dataset):
    """The training dataset as the loader sees it: a row that cannot be used comes as a `SkippedRow`
    (`sample_or_skip`, where the dataset has it) so its id reaches the trainer from any worker; keys
    are indices, or `(epoch, index)` pairs from `EpochBatches`."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._fetch = getattr(dataset, "sample_or_skip", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):
            epoch, key = key
            if self.dataset.epoch != epoch:
                self.dataset.set_epoch(epoch)
        return self._fetch(key)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class EpochCallback(TrainerCallback):
    """Training prompts are redrawn per epoch: tell the dataset which epoch it is."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))
