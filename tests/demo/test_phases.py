"""Resumable phases: finished ones are reused, interrupted ones redone, failures name their log."""

from __future__ import annotations

import sys

import pytest

from llava.demo.phases import MARKER, PhaseError, run_command, run_phase


def test_finished_phase_is_reused_and_interrupted_one_redone(tmp_path):
    calls = []

    def work(tmp):
        calls.append(tmp)
        (tmp / "result.txt").write_text("ok")
        return {"value": 1}

    timings: dict[str, float] = {}
    out = tmp_path / "phase"
    run_phase("p", out, work, timings)
    assert (out / "result.txt").read_text() == "ok" and (out / MARKER).is_file()
    run_phase("p", out, work, timings)
    assert len(calls) == 1  # reused

    def crash(tmp):
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        run_phase("q", other, crash, timings)
    assert not other.exists() and (tmp_path / "other.partial" / "half.txt").exists()
    run_phase("q", other, work, timings)  # the half-written attempt is discarded, not trusted
    assert not (tmp_path / "other.partial").exists()
    assert sorted(p.name for p in other.iterdir()) == [MARKER, "result.txt"]


def test_failed_command_names_phase_and_log(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(PhaseError, match=r"phase 'broken' failed \(exit 3\).*x\.log"):
        run_command("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log)
    assert "boom" in log.read_text()
