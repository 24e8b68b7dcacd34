"""Duration-bucketed batching: batches of similar-length utterances, so little of a batch is padding.

Per epoch (seeded by `seed` and the epoch): shuffle all indices, sort them by duration inside pools of
about `pool_batches` batches, cut the sorted run into batches (by count and/or by padded seconds =
batch size x longest utterance), and shuffle the batch order. With several data-parallel ranks every
rank builds the same batch list and takes every `num_replicas`-th batch: the ranks see disjoint indices
and the same number of batches (when the count does not divide, the largest batches are split in two;
with `drop_last` the leftover batches are dropped instead).

`min_batch_size` (2 for a contrastive objective, which has no negatives in a one-item batch): a batch
smaller than that is merged into its neighbour in duration order, so no batch is ever that small,
whatever the dataset size, the caps or an item longer than `max_batch_seconds`.

Resuming mid-epoch needs nothing here: the order depends only on (seed, epoch), so the Trainer's
resume (skip the first k batches of the epoch) lands on exactly the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DurationBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices (a `batch_sampler` for torch's DataLoader)."""

    def __init__(
        self,
        durations: Sequence[float] | np.ndarray,
        max_batch_seconds: float | None = None,
        batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 42,
        shuffle: bool = True,
        drop_last: bool = False,
        pool_batches: int = 100,
        min_batch_size: int = 1,
    ):
        """
        Args:
            durations: seconds per dataset index (`SpeechDataset.durations`).
            max_batch_seconds: cap on padded audio seconds per batch (size x longest item); an item
                longer than the cap gets a batch of its own.
            batch_size: cap on items per batch. At least one of the two caps is required.
            num_replicas, rank: data-parallel world size and this process's rank.
            seed: with the epoch, determines the order.
            shuffle: False = one global duration sort, batches in that order (evaluation).
            drop_last: drop a final batch smaller than batch_size, and leftover batches that do not
                divide among the ranks (instead of splitting batches).
            pool_batches: how many batches' worth of items are sorted together; larger pools mean less
                padding but batches that repeat more across epochs.
            min_batch_size: no batch has fewer items: a smaller one is merged into a neighbour
                (exceeding the caps by that much). Fewer items than this in all is an error.
        """
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1:
            raise ValueError("durations must be one-dimensional")
        if max_batch_seconds is None and batch_size is None:
            raise ValueError("give max_batch_seconds, batch_size or both")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        if len(self.durations) < num_replicas and not drop_last:
            raise ValueError(f"{len(self.durations)} items cannot be spread over {num_replicas} ranks")
        if min_batch_size < 1:
            raise ValueError(f"min_batch_size must be positive, got {min_batch_size}")
        if 0 < len(self.durations) < min_batch_size * num_replicas:
            raise ValueError(
                f"{len(self.durations)} items cannot give each of {num_replicas} rank(s) a batch of at least "
                f"{min_batch_size} (the contrastive loss needs 2 pairs per batch)"
            )
        self.max_batch_seconds = max_batch_seconds
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pool_batches = pool_batches
        self.min_batch_size = min_batch_size
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # ------------------------------------------------------------------------- batch construction
    def _items_per_batch(self) -> int:
        sizes = []
        if self.batch_size is not None:
            sizes.append(self.batch_size)
        if self.max_batch_seconds is not None and len(self.durations):
            typical = float(np.median(self.durations)) or 1.0
            sizes.append(max(1, int(self.max_batch_seconds / typical)))
        return max(1, min(sizes))

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        d = self.durations
        cap_n, cap_s = self.batch_size, self.max_batch_seconds
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_max = 0.0
        for i in order.tolist():
            longest = max(cur_max, d[i])
            if cur and (
                (cap_n is not None and len(cur) >= cap_n)
                or (cap_s is not None and longest * (len(cur) + 1) > cap_s)
            ):
                batches.append(cur)
                cur, longest = [], d[i]
            cur.append(i)
            cur_max = longest
        if cur and not (self.drop_last and cap_n is not None and len(cur) < cap_n):
            batches.append(cur)
        return self._merge_small(batches)

    def _merge_small(self, batches: list[list[int]]) -> list[list[int]]:
        """Merge every batch below min_batch_size into a neighbour (the previous one in duration
        order when there is one, so durations stay close); keeps every index once."""
        k = self.min_batch_size
        out: list[list[int]] = []
        for batch in batches:
            if out and (len(batch) < k or len(out[-1]) < k):
                out[-1] = out[-1] + batch
            else:
                out.append(list(batch))
        return out

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches over all ranks, before the per-rank split."""
        n = len(self.durations)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            perm = rng.permutation(n)
            pool = max(1, self.pool_batches * self._items_per_batch())
            order = (
                np.concatenate(
                    [
                        chunk[np.argsort(self.durations[chunk], kind="stable")]
                        for chunk in np.split(perm, range(pool, n, pool))
                    ]
                )
                if n
                else perm
            )
        else:
            order = np.argsort(self.durations, kind="stable")
        batches = self._cut(order)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        r = self.num_replicas
        if len(batches) % r:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % r]
            else:
                batches = self._split_to_multiple(batches, r, self.min_batch_size)
        return batches

    @staticmethod
    def _split_to_multiple(batches: list[list[int]], r: int, min_size: int = 1) -> list[list[int]]:
        """Split the largest batches in two until the count divides by r (keeps every index once;
        neither half smaller than min_size)."""
        batches = list(batches)
        while len(batches) % r:
            j = max(range(len(batches)), key=lambda b: len(batches[b]))
            big = batches[j]
            if len(big) < 2 * min_size:
                raise ValueError(
                    f"{sum(map(len, batches))} items cannot give every one of {r} ranks a batch of at least "
                    f"{min_size}"
                )
            half = (len(big) + 1) // 2
            batches[j : j + 1] = [big[:half], big[half:]]
        return batches

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's full batch list for an epoch (default: the current one), ignoring the resume point."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._all_batches(epoch)[self.rank :: self.num_replicas])
        return self._cache[1]

    # ------------------------------------------------------------------------- sampler protocol
    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.rank_batches():
            yield list(batch)

    def __len__(self) -> int:
        """Batches one epoch yields on this rank."""
        return len(self.rank_batches())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def padding_fraction(batches: Sequence[Sequence[int]], durations: Sequence[float] | np.ndarray) -> float:
    """Share of padded audio in a batch list: 1 - sum(durations) / sum(batch size x longest)."""
    d = np.asarray(durations, dtype=np.float64)
    padded = sum(len(b) * float(d[list(b)].max()) for b in batches if len(b))
    real = sum(float(d[list(b)].sum()) for b in batches if len(b))
    return 0.0 if padded == 0 else 1.0 - real / padded
