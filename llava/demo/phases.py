"""Resumable phases with a progress bar each.

A phase writes into a temporary directory that is renamed into place when done, with a `DONE.json`
marker, so a re-run reuses finished phases and never trusts a half-written one. A training run that
diverges (non-finite loss) finishes its phase with `status: "diverged"` instead of failing the study:
the divergence is a result, reported in the table, and a re-run does not retry it.

Each running phase shows a tqdm bar (steps of a training run, utterances of an evaluation) with an
ETA, and each finished phase logs one summary line: its name, wall time, headline numbers, and the
study's elapsed time with an estimate of what is left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger("llava.demo")
MARKER = "DONE.json"
# What the training entry point prints when it stops on non-finite losses.
DIVERGENCE_PATTERNS = ("NonFiniteLossError", "had a non-finite loss")
# A tqdm counter "12/60 [" in a subprocess's output (the HF Trainer's step bar).
_COUNTER = re.compile(r"(\d+)/(\d+) \[")


# Set in worker processes (llava.demo.parallel): the terminal line of this worker's progress bars,
# and whether the study asked every worker to stop before its next phase (another one failed).
WORKER_SLOT = 0
STOP_REQUESTED: Callable[[], bool] = lambda: False  # noqa: E731


class PhaseError(RuntimeError):
    """A phase failed; the message names it and points at its log."""


class StopRequested(RuntimeError):
    """The study stops (another worker's phase failed) before this phase started."""


class DivergedError(RuntimeError):
    """A training run stopped on non-finite losses (a result, not a failure of the study)."""


def is_done(path: Path) -> bool:
    return (path / MARKER).is_file()


def phase_info(path: Path) -> dict:
    """The DONE.json of a finished phase ({} when the phase has not finished)."""
    return json.loads((path / MARKER).read_text()) if is_done(path) else {}


def _as_json(settings: dict) -> dict:
    """`settings` as its JSON form (tuples become lists), the form DONE.json stores and compares."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_digest(path: Path) -> str | None:
    """A short hash of the settings a finished phase ran under (None when it recorded none): a later
    phase that reads its output names it in its own settings, so it re-runs when this one did."""
    recorded = phase_info(path).get("settings")
    if recorded is None:
        return None
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


def diverged(path: Path) -> bool:
    return phase_info(path).get("status") == "diverged"


class DiskScan:
    """The finished phases of a study directory, read from their DONE.json files: a list of
    (name, kind, seconds), where the kind of `seed0/pretrain/asr` is "pretrain" and of
    `full_data/asr/eval` is "eval". Picklable, so worker processes estimate from the same record."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self) -> list[tuple[str, str, float]]:
        found = []
        for pattern, kind_at in (("seed*/*/*/" + MARKER, 1), ("full_data/*/*/" + MARKER, 0)):
            for marker in self.root.glob(pattern):
                phase = marker.parent
                parts = phase.relative_to(self.root).parts
                try:
                    seconds = float(json.loads(marker.read_text()).get("seconds", 0.0))
                except (OSError, ValueError):
                    continue  # being renamed into place right now
                found.append(("/".join(parts), parts[1] if kind_at else parts[2], seconds))
        # Top-level phases, under the names their run_phase calls use.
        for name, folder, kind in (
            ("base models", "base", "base"),
            ("feature cache", "feature_cache_fill", "cache"),
        ):
            info = phase_info(self.root / folder)
            if info:
                found.append((name, kind, float(info.get("seconds", 0.0))))
        return found


class Tracker:
    """Timings of the study's phases and a running estimate of the time left.

    `plan` maps a phase kind (e.g. "pretrain") to how many phases of that kind the study runs; the
    estimate of what is left multiplies the mean time per finished phase of each kind by the number
    still to run (kinds not yet seen borrow the overall mean), divided by the parallel `workers`.
    With `scan` (a `DiskScan`) the finished phases are read from disk, which every worker shares."""

    def __init__(
        self,
        plan: dict[str, int] | None = None,
        progress: bool = True,
        workers: int = 1,
        scan: Callable[[], list[tuple[str, str, float]]] | None = None,
        t0: float | None = None,
    ) -> None:
        self.plan = dict(plan or {})
        self.progress = progress
        self.workers = max(1, workers)
        self.scan = scan
        self.timings: dict[str, float] = {}
        self.kinds: dict[str, str] = {}
        self.t0 = time.time() if t0 is None else t0  # wall clock: shared with worker processes

    def record(self, name: str, kind: str, seconds: float) -> None:
        self.timings[name] = seconds
        self.kinds[name] = kind

    def finished(self) -> list[tuple[str, str, float]]:
        """(name, kind, seconds) of every finished phase known (on disk and in this process)."""
        seen = {name: (name, kind, secs) for name, kind, secs in (self.scan() if self.scan else [])}
        for name, secs in self.timings.items():
            seen[name] = (name, self.kinds[name], secs)
        return list(seen.values())

    def remaining(self) -> float:
        done: dict[str, list[float]] = {}
        for _, kind, secs in self.finished():
            done.setdefault(kind, []).append(secs)
        overall = [s for v in done.values() for s in v]
        fallback = sum(overall) / len(overall) if overall else 0.0
        left = 0.0
        for kind, count in self.plan.items():
            seen = done.get(kind, [])
            mean = sum(seen) / len(seen) if seen else fallback
            left += max(0, count - len(seen)) * mean
        return left / self.workers

    def bar(self, name: str, total: int | None, unit: str) -> tqdm:
        return tqdm(
            total=total,
            desc=name,
            unit=unit,
            disable=not self.progress,
            leave=False,
            position=WORKER_SLOT,
            mininterval=1.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def summary(self, name: str, seconds: float, info: dict, reused: bool = False) -> None:
        """One log line for a finished (or reused) phase."""
        status = info.get("status", "ok")
        state = f"reused ({status})" if reused else status
        headline = f" | {info['summary']}" if info.get("summary") else ""
        logger.info(
            "[%s] %s, %.0f s%s | this run: %.0f s elapsed, ~%.0f s left",
            name,
            state,
            seconds,
            headline,
            time.time() - self.t0,
            self.remaining(),
        )


# CPU seconds of finished runs this process had forked by a fork server (children of the server, so
# not in this process's RUSAGE_CHILDREN); reported by the runs themselves (llava.demo.script_runs).
_FORKED_CPU_SECONDS = 0.0


def add_forked_cpu_seconds(seconds: float) -> None:
    global _FORKED_CPU_SECONDS
    _FORKED_CPU_SECONDS += seconds


def cpu_seconds() -> float:
    """User + system CPU time of this process, of its finished child processes and of the finished runs
    it had forked elsewhere."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + _FORKED_CPU_SECONDS


def run_phase(
    name: str,
    out: Path,
    work: Callable[[Path], dict | None],
    tracker: Tracker,
    kind: str | None = None,
    settings: dict | None = None,
) -> Path:
    """Run `work(tmp_dir)` unless `out` is already complete; returns `out`.

    `work` returns extra fields for DONE.json ("summary": a headline for the log line). A
    `DivergedError` from `work` finishes the phase with status "diverged" and the error's message.
    `settings` (JSON-able: the run's arguments, the settings digests of the phases it reads) are
    recorded in DONE.json; a finished phase is reused only under the same settings, so a re-run with
    another budget redoes what the change touches instead of reporting stale results."""
    kind = kind or name
    if is_done(out):
        info = phase_info(out)
        if settings is None or info.get("settings") == _as_json(settings):
            tracker.record(name, kind, info.get("seconds", 0.0))
            tracker.summary(name, info.get("seconds", 0.0), info, reused=True)
            return out
        logger.info("[%s] finished under other settings: running it again", name)
    if STOP_REQUESTED():
        raise StopRequested(f"[{name}] not started: the study is stopping")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        logger.info("[%s] removing an interrupted attempt at %s", name, tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    logger.info("[%s] running ...", name)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    try:
        extra = work(tmp) or {}
    except DivergedError as exc:
        extra = {"status": "diverged", "reason": str(exc), "summary": f"diverged: {exc}"}
    seconds = time.perf_counter() - t0
    # CPU time (this process and the runs it waited for): the cost on an otherwise idle machine,
    # whatever else shared the cores while the study ran.
    info = {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0, "status": "ok", **extra}
    if settings is not None:
        info["settings"] = _as_json(settings)
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    tracker.record(name, kind, seconds)
    tracker.summary(name, seconds, info)
    return out


class OutputFollower:
    """Moves a phase's progress bar from the output of the process doing the work.

    With `bar`, tqdm counters "k/total [" whose total equals `bar.total` (the trainer's step bar) move
    it; with `shards` (a pattern with groups shard, done, total), the bar shows the sum over shards of
    their latest counts instead."""

    def __init__(self, bar: tqdm | None = None, shards: re.Pattern | None = None) -> None:
        self.bar, self.shards = bar, shards
        self.pending = b""
        self.latest: dict[str, tuple[int, int]] = {}

    def feed(self, chunk: bytes) -> None:
        bar = self.bar
        if bar is None or not chunk:
            return
        # A counter can be split across two reads: keep a tail of the previous output.
        self.pending = (self.pending + chunk)[-4096:]
        text = self.pending.decode("utf-8", "replace")
        if self.shards is not None:
            for shard, k, total in self.shards.findall(text):
                self.latest[shard] = (int(k), int(total))
            if self.latest:
                bar.total = max(bar.total or 0, sum(t for _, t in self.latest.values()))
                bar.update(max(0, sum(k for k, _ in self.latest.values()) - bar.n))
            return
        counters = _COUNTER.findall(text)
        steps = [int(k) for k, total in counters if bar.total and int(total) == bar.total]
        if steps and steps[-1] > bar.n:
            bar.update(steps[-1] - bar.n)


def raise_failure(name: str, returncode: int, log_path: Path) -> None:
    """The error for a process that exited with `returncode` != 0: `DivergedError` when its log shows
    it stopped on non-finite losses, `PhaseError` (naming the phase, the log and its tail) otherwise."""
    text = log_path.read_text(errors="replace")
    if any(p in text for p in DIVERGENCE_PATTERNS):
        last = [ln for ln in text.splitlines() if "non-finite" in ln][-1:]
        raise DivergedError(f"non-finite losses (log: {log_path}) {last[0][-300:] if last else ''}".strip())
    raise PhaseError(f"phase {name!r} failed (exit {returncode}); log: {log_path}\n{text[-2000:]}")


def run_command(
    name: str,
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    bar: tqdm | None = None,
    shards: re.Pattern | None = None,
) -> None:
    """Run a subprocess with its output in `log_path`; `bar` and `shards` as in `OutputFollower`.
    A failure raises as `raise_failure` says."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    follower = OutputFollower(bar, shards)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
            log.write(chunk)
            follower.feed(chunk)
        returncode = proc.wait()
    if returncode != 0:
        raise_failure(name, returncode, log_path)


def python() -> str:
    return sys.executable
