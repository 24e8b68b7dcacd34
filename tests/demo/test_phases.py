"""Resumable phases: finished ones are reused, interrupted ones redone, divergence recorded as a
result, failures name their log; progress bars follow a subprocess's step counter."""

from __future__ import annotations

import json
import sys

import pytest

from llava.demo.phases import (
    MARKER,
    DivergedError,
    PhaseError,
    Tracker,
    diverged,
    phase_info,
    run_command,
    run_phase,
    settings_digest,
)


def test_finished_phase_is_reused_and_interrupted_one_redone(tmp_path):
    calls = []

    def work(tmp):
        calls.append(tmp)
        (tmp / "result.txt").write_text("ok")
        return {"value": 1, "summary": "fine"}

    tracker = Tracker(progress=False)
    out = tmp_path / "phase"
    run_phase("p", out, work, tracker)
    assert (out / "result.txt").read_text() == "ok" and phase_info(out)["value"] == 1
    run_phase("p", out, work, tracker)
    assert len(calls) == 1  # reused

    def crash(tmp):
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        run_phase("q", other, crash, tracker)
    assert not other.exists() and (tmp_path / "other.partial" / "half.txt").exists()
    run_phase("q", other, work, tracker)  # the half-written attempt is discarded, not trusted
    assert not (tmp_path / "other.partial").exists()
    assert sorted(p.name for p in other.iterdir()) == [MARKER, "result.txt"]


def test_a_finished_phase_is_reused_only_under_its_settings(tmp_path):
    calls = []

    def work(tmp):
        calls.append(tmp)
        return {"summary": "fine"}

    tracker = Tracker(progress=False)
    out = tmp_path / "phase"
    run_phase("p", out, work, tracker)  # recorded without settings (as by an older version)
    run_phase("p", out, work, tracker, settings={"steps": 4})  # cannot tell: redone
    assert len(calls) == 2 and phase_info(out)["settings"] == {"steps": 4}
    first = settings_digest(out)
    run_phase("p", out, work, tracker, settings={"steps": 4})
    assert len(calls) == 2  # the same settings: reused
    run_phase("p", out, work, tracker, settings={"steps": (5,)})  # tuples compare as their JSON lists
    run_phase("p", out, work, tracker, settings={"steps": [5]})
    assert len(calls) == 3 and settings_digest(out) != first and len(first) == 16
    assert settings_digest(tmp_path / "never_run") is None


def test_divergence_finishes_the_phase_as_a_result_and_is_not_retried(tmp_path):
    calls = []

    def work(tmp):
        calls.append(1)
        raise DivergedError("non-finite losses at step 7")

    tracker = Tracker(progress=False)
    out = run_phase("train", tmp_path / "run", work, tracker)
    assert diverged(out) and "step 7" in phase_info(out)["reason"]
    run_phase("train", tmp_path / "run", work, tracker)
    assert calls == [1]


def test_failed_command_names_phase_and_log(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(PhaseError, match=r"phase 'broken' failed \(exit 3\).*x\.log"):
        run_command("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log)
    assert "boom" in log.read_text()


def test_command_stopped_by_nonfinite_losses_is_a_divergence(tmp_path):
    script = (
        "import sys\n"
        "print('step 3: non-finite loss skipped')\n"
        "print('llava.train.trainer.NonFiniteLossError: 21 training steps had a non-finite loss')\n"
        "sys.exit(1)\n"
    )
    with pytest.raises(DivergedError, match="non-finite"):
        run_command("train", [sys.executable, "-c", script], tmp_path / "t.log")


def test_progress_bar_follows_the_trainer_step_counter(tmp_path):
    script = (
        "import sys\n"
        "sys.stderr.write('Loading weights: 100%|##| 53/53 [00:00<00:00]\\n')\n"  # another bar: ignored
        "for k in range(11):\n"
        "    sys.stderr.write(f'\\r {k * 10}%|#   | {k}/10 [00:0{k}<00:10, 1.00it/s]'); sys.stderr.flush()\n"
    )
    tracker = Tracker(progress=True)
    bar = tracker.bar("train", 10, "step")
    run_command("train", [sys.executable, "-c", script], tmp_path / "t.log", bar=bar)
    assert bar.n == 10
    assert "53/53" in (tmp_path / "t.log").read_text()


def test_tracker_estimates_the_time_left_per_kind():
    tracker = Tracker({"pretrain": 4, "eval": 4}, progress=False)
    tracker.record("a", "pretrain", 10.0)
    tracker.record("b", "pretrain", 20.0)
    # pretrain: 2 left x 15 s; eval: none seen yet, 4 x the overall mean (15 s)
    assert tracker.remaining() == pytest.approx(2 * 15 + 4 * 15)
    tracker.record("c", "eval", 3.0)
    assert tracker.remaining() == pytest.approx(2 * 15 + 3 * 3)
    json.dumps(tracker.timings)  # serialisable for results.json


def test_progress_bar_sums_the_shards_of_a_parallel_command(tmp_path):
    import re

    script = (
        "print('worker 0: 500/1200 rows (3.0 rows/s)')\n"
        "print('worker 1: 500/1100 rows (3.1 rows/s)')\n"
        "print('worker 0: 1000/1200 rows (3.0 rows/s)')\n"
    )
    bar = Tracker(progress=True).bar("fill", None, "utt")
    pattern = re.compile(r"worker (\d+): (\d+)/(\d+) rows")
    run_command("fill", [sys.executable, "-c", script], tmp_path / "f.log", bar=bar, shards=pattern)
    assert (bar.n, bar.total) == (1500, 2300)
