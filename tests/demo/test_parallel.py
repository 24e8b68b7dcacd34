"""Chains in worker processes: results in job order, one process per worker, a follow-up job run as
soon as its inputs are done, failures raised."""

from __future__ import annotations

import os

import pytest

from llava.demo import phases
from llava.demo.parallel import run_parallel


def _job(k: int) -> tuple[int, int, int, str]:
    import torch

    threads = f"{os.environ.get('OMP_NUM_THREADS', '')}/{torch.get_num_threads()}"
    return k * k, os.getpid(), phases.WORKER_SLOT, threads


def _failing(k: int) -> int:
    if k == 1:
        raise ValueError("chain 1 failed")
    return k


def _follow(done):
    # Ready once jobs 0 and 1 are done; the follow-up reads their results.
    if 0 in done and 1 in done:
        return [(_job, (done[0][0] + done[1][0],))]
    return None


def test_two_worker_processes_results_in_order_and_a_follow_up():
    out, extra = run_parallel(_job, [(k,) for k in range(5)], workers=2, follow_up=_follow)
    assert [r[0] for r in out] == [k * k for k in range(5)]
    assert os.getpid() not in {r[1] for r in out}
    assert {r[2] for r in out} <= {0, 1}  # each worker draws its bars on its own line
    threads = max(1, (os.cpu_count() or 2) // 2)
    assert {r[3] for r in out} == {f"{threads}/{threads}"}  # the environment and torch's own pool
    assert len(extra) == 1 and extra[0][0] == (0 + 1) ** 2


def test_one_worker_runs_in_this_process_with_the_follow_up():
    out, extra = run_parallel(_job, [(k,) for k in range(3)], workers=1, follow_up=_follow)
    assert [r[0] for r in out] == [0, 1, 4] and {r[1] for r in out} == {os.getpid()}
    assert extra[0][0] == 1


def test_a_failing_job_is_raised_in_the_main_process():
    with pytest.raises(ValueError, match="chain 1 failed"):
        run_parallel(_failing, [(k,) for k in range(4)], workers=2)
