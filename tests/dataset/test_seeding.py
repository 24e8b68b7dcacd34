"""Per-sample generators: the same draws in every process, worker and rerun."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from llava.dataset import seeding
from llava.dataset.seeding import stable_rng


def _draws(seed: int, *keys: object) -> list[int]:
    return stable_rng(seed, *keys).integers(0, 2**31, size=4).tolist()


def test_same_seed_and_keys_same_draws_other_keys_other_draws():
    assert _draws(42, "MuSTC:train:7", 0) == _draws(42, "MuSTC:train:7", 0)
    others = [
        _draws(43, "MuSTC:train:7", 0),  # seed
        _draws(42, "MuSTC:train:8", 0),  # sample
        _draws(42, "MuSTC:train:7", 1),  # epoch
        _draws(42, 0, "MuSTC:train:7"),  # key order matters
    ]
    assert all(o != _draws(42, "MuSTC:train:7", 0) for o in others)
    assert len({tuple(o) for o in others}) == len(others)


def test_seed_wider_than_32_bits_is_accepted():
    assert isinstance(stable_rng(2**40 + 5, "a"), np.random.Generator)
    assert _draws(2**32 + 5, "a") == _draws(5, "a")  # only the low 32 bits of the seed count


def test_draws_do_not_depend_on_the_process_hash_seed():
    # Python's hash() of a string changes with PYTHONHASHSEED; the generator must not. The module is
    # loaded by path so the child process does not import torch (the package's __init__ does).
    code = (
        "import importlib.util as u, sys; spec = u.spec_from_file_location('seeding', sys.argv[1]); "
        "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
        "print(m.stable_rng(7, 'row:3', 2).integers(0, 2**31, size=4).tolist())"
    )
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        cmd = [sys.executable, "-c", code, seeding.__file__]
        outs.add(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert outs == {str(_draws(7, "row:3", 2))}
