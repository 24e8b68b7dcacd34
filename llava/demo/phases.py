"""Resumable phases: each writes into a temporary directory and is renamed into place when done,
with a `DONE.json` marker, so a re-run reuses finished phases and never trusts a half-written one."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("llava.demo")
MARKER = "DONE.json"


class PhaseError(RuntimeError):
    """A phase failed; the message names it and points at its log."""


def is_done(path: Path) -> bool:
    return (path / MARKER).is_file()


def run_phase(name: str, out: Path, work: Callable[[Path], dict | None], timings: dict[str, float]) -> Path:
    """Run `work(tmp_dir)` unless `out` is already complete; returns `out`."""
    if is_done(out):
        info = json.loads((out / MARKER).read_text())
        timings[name] = info.get("seconds", 0.0)
        logger.info("[%s] reused (%s)", name, out)
        return out
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        logger.info("[%s] removing an interrupted attempt at %s", name, tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    logger.info("[%s] running ...", name)
    t0 = time.perf_counter()
    extra = work(tmp) or {}
    seconds = time.perf_counter() - t0
    (tmp / MARKER).write_text(json.dumps({"seconds": seconds, **extra}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    timings[name] = seconds
    logger.info("[%s] done in %.0f s", name, seconds)
    return out


def run_command(name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run a subprocess with its output in `log_path`; a failure raises naming the phase and the log."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise PhaseError(f"phase {name!r} failed (exit {proc.returncode}); log: {log_path}\n{tail}")


def python() -> str:
    return sys.executable
