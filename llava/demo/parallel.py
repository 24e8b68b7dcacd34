"""Run the study's (seed, variant) chains in parallel worker processes, one per core.

The models of the embedded default are tiny: one process per core, each with one thread, uses two
cores far better than one process with two threads. Every chain writes its own phase directories, so
chains are independent; the frozen-feature cache they share is content-addressed and written
atomically. Workers are spawned (not forked) so no thread pool or lock is inherited, log to the same
stdout, and each draws its progress bars on its own terminal line. When a chain fails, the others
stop before their next phase and the failure is raised in the main process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any

from llava.demo import phases

_STOP = None  # the pool's stop event, in a worker


def _init_worker(slots, stop, threads: int) -> None:
    global _STOP
    _STOP = stop
    phases.WORKER_SLOT = slots.get()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the training runs it starts
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    phases.STOP_REQUESTED = _STOP.is_set


def run_parallel(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """`[fn(*job) for job in jobs]`, in `workers` processes (in this process when workers <= 1).

    `fn` must be picklable (a module-level function or a bound method of a picklable object). Results
    come back in job order; the first exception stops the remaining jobs and is raised."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    stop = ctx.Event()
    threads = max(1, (os.cpu_count() or workers) // workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, stop, threads)
    ) as pool:
        futures: list[Future] = [pool.submit(fn, *job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()  # running chains stop before their next phase
            for f in futures:
                f.cancel()
            raise failed[0].exception()
        return [f.result() for f in futures]
