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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from llava.demo import phases

_STOP = None  # the pool's stop event, in a worker


def _init_worker(slots, stop, threads: int) -> None:
    global _STOP
    _STOP = stop
    phases.WORKER_SLOT = slots.get()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the training runs it starts
    # Importing `llava` (to unpickle the job) has already imported torch with its default thread
    # count: without this, two workers would run four threads on two cores, spinning on each other.
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    phases.STOP_REQUESTED = _STOP.is_set


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    follow_up: Callable[[dict[int, Any]], list[tuple[Callable[..., Any], tuple]] | None] | None = None,
) -> tuple[list[Any], list[Any]]:
    """`[fn(*job) for job in jobs]`, in `workers` processes (in this process when workers <= 1).

    `follow_up(done)` is called here after each job with `{job index: result}` so far; it returns None
    while it is not ready, then once a list of further `(fn, args)` jobs, which run next, ahead of the
    jobs still waiting. Functions must be picklable (module-level, or bound methods of picklable
    objects). Returns (results in job order, follow-up results in their order); the first exception
    stops the remaining jobs and is raised."""
    done: dict[int, Any] = {}
    extra_jobs: list[tuple[Callable[..., Any], tuple]] = []
    asked = follow_up is None

    def check() -> None:
        nonlocal asked, extra_jobs
        if not asked:
            more = follow_up(done)
            if more is not None:
                asked, extra_jobs = True, list(more)

    if workers <= 1:
        extras: list[Any] = []
        for i, job in enumerate(jobs):
            done[i] = fn(*job)
            check()
            while extra_jobs:
                f, args = extra_jobs.pop(0)
                extras.append(f(*args))
        return [done[i] for i in range(len(jobs))], extras
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    stop = ctx.Event()
    threads = max(1, (os.cpu_count() or workers) // workers)
    waiting = list(range(len(jobs)))
    extra_futures: list[Future] = []
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(slots, stop, threads)
    ) as pool:
        running: dict[Future, int | None] = {}  # future -> job index (None: a follow-up)

        def fill() -> None:
            # Exactly `workers` in flight, so a follow-up submitted now starts next, not behind a queue.
            while len(running) < workers and (extra_jobs or waiting):
                if extra_jobs:
                    f, args = extra_jobs.pop(0)
                    fut = pool.submit(f, *args)
                    extra_futures.append(fut)
                    running[fut] = None
                else:
                    i = waiting.pop(0)
                    running[pool.submit(fn, *jobs[i])] = i

        fill()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                i = running.pop(fut)
                if fut.exception() is not None:
                    stop.set()  # running chains stop before their next phase
                    for other in running:
                        other.cancel()
                    raise fut.exception()
                if i is not None:
                    done[i] = fut.result()
            check()
            fill()
    return [done[i] for i in range(len(jobs))], [f.result() for f in extra_futures]
