"""Chains in worker processes: results in job order, one process per worker, failures raised."""

from __future__ import annotations

import os

import pytest

from llava.demo import phases
from llava.demo.parallel import run_parallel


def _job(k: int) -> tuple[int, int, int, str]:
    return k * k, os.getpid(), phases.WORKER_SLOT, os.environ.get("OMP_NUM_THREADS", "")


def _failing(k: int) -> int:
    if k == 1:
        raise ValueError("chain 1 failed")
    return k


def test_results_in_job_order_from_two_worker_processes():
    out = run_parallel(_job, [(k,) for k in range(6)], workers=2)
    assert [r[0] for r in out] == [k * k for k in range(6)]
    assert os.getpid() not in {r[1] for r in out}
    assert {r[2] for r in out} <= {0, 1}  # each worker draws its bars on its own line
    assert {r[3] for r in out} == {str(max(1, (os.cpu_count() or 2) // 2))}
    assert run_parallel(_job, [(3,)], workers=2)[0][1] == os.getpid()  # one job: no pool


def test_a_failing_job_is_raised_in_the_main_process():
    with pytest.raises(ValueError, match="chain 1 failed"):
        run_parallel(_failing, [(k,) for k in range(4)], workers=2)
