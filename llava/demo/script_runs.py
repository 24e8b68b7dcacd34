"""The study's training runs: a user-facing script decides the command, a pre-imported process runs it.

Each training run goes through `scripts/pretrain/*.sh` or `scripts/finetune/*.sh`, exactly as a user
launches it. Started as a fresh `python -m llava.train.train`, a run of the embedded default spends
about 9 s importing torch, transformers and the package before its first step (a 1-step run takes
12 s): over the study's ~40 runs, minutes of a 30-minute budget. So the script is asked for its
command (`DRY_RUN=1`, which prints it), and when that command is the plain one-process launcher the
entry point runs in a child forked from a server that imported it once (`multiprocessing`'s
forkserver). Every run still gets a process of its own, as fresh as a new interpreter except for the
modules already imported; the server itself never runs a tensor operation, so no thread pool or lock
is copied into a child. Any other command (torchrun, DeepSpeed, a quoting the parser cannot read)
runs the script as a subprocess, as does every run where there is no fork server (Windows).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import shlex
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from tqdm.auto import tqdm

from llava.demo.phases import OutputFollower, add_forked_cpu_seconds, raise_failure, run_command

ENTRY = ("python", "-m", "llava.train.train")  # the command a script runs on one CPU process
PRELOAD = ["llava.train.train"]  # imported once by the fork server
POLL_SECONDS = 0.5  # how often the log of a forked run is read for progress
# Runs in a fresh interpreter when set (e.g. to rule the fork server out when chasing a problem).
FRESH_ENV = "LLAVA_DEMO_FRESH_PROCESSES"

_context: mp.context.BaseContext | None = None


def script_command(script: Path, args: list[str], env: dict[str, str]) -> list[str] | None:
    """The argv `bash script args` would run with `env`, or None when it cannot be read back.

    `launch.sh` prints its command with bash's `%q` quoting under `DRY_RUN=1`; POSIX shell splitting
    reads it back, except the `$'...'` form bash uses for control characters."""
    full_env = {**os.environ, **env, "DRY_RUN": "1"}
    done = subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or "$'" in lines[-1]:
        return None
    try:
        return shlex.split(lines[-1])
    except ValueError:
        return None


def run_script(
    name: str,
    script: Path,
    args: list[str],
    log_path: Path,
    env: dict[str, str],
    bar: tqdm | None = None,
) -> None:
    """Run `bash script args` with `env` (added to this process's), its output in `log_path` and its
    step counter moving `bar`; in a forked pre-imported process when the script runs the plain
    entry point. Failures raise as `llava.demo.phases.raise_failure` says."""
    forkable = "forkserver" in mp.get_all_start_methods() and not os.environ.get(FRESH_ENV)
    argv = script_command(script, args, env) if forkable else None
    if argv is None or tuple(argv[:3]) != ENTRY:
        run_command(name, ["bash", str(script), *args], log_path, env=env, bar=bar)
        return
    ctx = _fork_server()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_entry, args=(argv[3:], str(log_path), env, send), name=name)
    log_path.touch()
    proc.start()
    send.close()
    follower = OutputFollower(bar)
    try:
        with open(log_path, "rb") as log:
            while True:
                alive = proc.is_alive()
                follower.feed(log.read())
                if not alive:
                    break
                time.sleep(POLL_SECONDS)
        proc.join()
    finally:
        if proc.is_alive():  # this process is being interrupted: take the run down with it
            proc.terminate()
            proc.join()
    if receive.poll():  # the run's CPU time: it is not a child of this process
        add_forked_cpu_seconds(receive.recv())
    receive.close()
    if proc.exitcode != 0:
        raise_failure(name, proc.exitcode if proc.exitcode is not None else -1, log_path)


def _fork_server() -> mp.context.BaseContext:
    global _context
    if _context is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


def _run_entry(argv: list[str], log_path: str, env: dict[str, str], report: Connection) -> None:
    """In the forked child: what `python -m llava.train.train *argv` would do, output to `log_path`;
    its CPU seconds are sent on `report` at the end, whether it succeeded or not."""
    try:
        _entry(argv, log_path, env)
    finally:
        use = resource.getrusage(resource.RUSAGE_SELF)
        report.send(use.ru_utime + use.ru_stime)
        report.close()


def _entry(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # The streams were made by the server for its own output: one line at a time, as with
    # PYTHONUNBUFFERED, so the log shows progress while the run is going.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.environ.update(env)
    import torch

    # Fixed at the server's start from the same environment a subprocess would see; set again in case
    # `env` changes it.
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    sys.argv = ["-m", *argv]
    from llava.train.train import run

    run(argv)
