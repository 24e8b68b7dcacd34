"""Batched generation over an indexable set of samples: the loop evaluation and batch inference share.

The items are whatever a `torch.utils.data.Dataset` yields: a `Sample` (or a mapping with its fields),
None when the item's audio could not be read, or an `Unreadable` saying why. Items are grouped longest first (similar lengths
share a batch, memory peaks early), decoded by DataLoader workers, collated and generated; every
requested index comes back exactly once, either with its text or with the reason it failed:

- the `Unreadable`'s reason, or `bad_audio` when the dataset returned None (the audio could not be
  decoded);
- `exceeds_max_length`: the collator dropped it (cannot happen with `inference_collator`, which never
  truncates; kept so a custom collator's drops are still accounted for).

Outputs do not depend on how the items are batched (`llava.inference.generation`), so a resumed run
generates exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from llava.dataset.collator import SpeechCollator
from llava.dataset.skips import BAD_AUDIO, EXCEEDS_MAX_LENGTH
from llava.inference.generation import GenerationSettings, generate_batch, stop_token_ids

__all__ = ["Prediction", "Unreadable", "batches_by_length", "predict"]


class Unreadable(NamedTuple):
    """What a dataset may return instead of a sample whose audio cannot be used: the reason and why."""

    reason: str  # a short counter key, e.g. llava.dataset.audio.UNDECODABLE
    error: str = ""  # the message


@dataclass
class Prediction:
    """The outcome of one item: its text, or the reason it has none (`failed`)."""

    index: int  # position in the dataset
    sample: Any | None  # the item as the dataset returned it (None: unreadable audio)
    text: str  # generated text ("" when failed)
    failed: str | None = None  # None, the Unreadable's reason, BAD_AUDIO or EXCEEDS_MAX_LENGTH
    error: str | None = None  # the Unreadable's message, when there is one


def batches_by_length(
    indices: Sequence[int], durations: Sequence[float] | None, batch_size: int
) -> list[list[int]]:
    """`indices` in batches of `batch_size`, longest first (ties in index order); unsorted without durations."""
    if batch_size < 1:
        raise ValueError(f"batch size (--batch-size) must be >= 1, got {batch_size}")
    order = list(indices)
    if durations is not None:
        # Unknown durations (NaN) sort last; `-d` of NaN is NaN, which breaks sorting: map it to +inf.
        def key(i: int) -> tuple[float, int]:
            d = float(durations[i])
            return (-d if d == d else float("inf"), i)

        order.sort(key=key)
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


class _Indexed(Dataset):
    """Yields (index, item) so items that fail to decode (None) keep their identity."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


class _Collate:
    def __init__(self, collator: SpeechCollator):
        self.collator = collator

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], dict]:
        return items, self.collator([None if isinstance(s, Unreadable) else s for _, s in items])


def _sample_id(sample: Any) -> Any:
    return getattr(sample, "id", None) if not isinstance(sample, dict) else sample.get("id")


def predict(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    indices: Sequence[int],
    collator: SpeechCollator,
    settings: GenerationSettings | None = None,
    *,
    batch_size: int = 8,
    durations: Sequence[float] | None = None,
    num_workers: int = 0,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[list[Prediction]]:
    """Generate for `dataset[i]` for every i in `indices`; yields one list of `Prediction`s per batch.

    `durations[i]` (seconds, optional) orders the batches longest first. The model is put in eval mode
    for the duration and restored afterwards.
    """
    settings = settings or GenerationSettings()
    batches = batches_by_length(indices, durations, batch_size)
    if not batches:
        return
    stops = stop_token_ids(tokenizer, model)
    loader = DataLoader(
        _Indexed(dataset),
        batch_sampler=batches,
        collate_fn=_Collate(collator),
        num_workers=num_workers,
    )
    was_training = model.training
    model.eval()
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="utt", disable=not progress)
    try:
        for items, batch in loader:
            texts = generate_batch(model, tokenizer, batch, settings, stops)
            by_id = dict(zip(batch["ids"], texts))
            out = []
            for i, sample in items:
                sid = _sample_id(sample) if sample is not None else None
                if isinstance(sample, Unreadable):
                    out.append(Prediction(i, None, "", sample.reason, sample.error))
                elif sample is None:
                    out.append(Prediction(i, None, "", BAD_AUDIO))
                elif sid in by_id:
                    out.append(Prediction(i, sample, by_id[sid]))
                else:
                    out.append(Prediction(i, sample, "", EXCEEDS_MAX_LENGTH))
            yield out
            bar.update(len(items))
    finally:
        bar.close()
        model.train(was_training)
