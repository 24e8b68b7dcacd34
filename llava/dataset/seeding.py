"""Per-sample random generators that do not depend on worker count, iteration order or process."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator determined by `seed` and `keys` (e.g. a sample id and an epoch).

    Python's `hash()` of a string changes between processes, so keys are hashed with blake2b: the same
    sample gets the same prompt / interleaving in every DataLoader worker and every rerun.
    """
    digest = hashlib.blake2b(repr(keys).encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest, "little")])
