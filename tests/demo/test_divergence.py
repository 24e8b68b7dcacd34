"""A training run that diverges is a result: the study finishes and its table reports the seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_a_diverged_stage_2_run_is_reported_not_dropped(tmp_path):
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "demo"
    cmd = [
        sys.executable, "-m", "llava.demo", "--smoke", "--out", str(out), "--variants", "asr", "--seeds", "1",
        "--no-full-data", "--no-progress", "--set", "finetune_learning_rate=inf",
    ]  # fmt: skip
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    done = json.loads((out / "seed0" / "finetune" / "asr" / "DONE.json").read_text())
    assert done["status"] == "diverged" and "non-finite" in done["reason"]
    assert not (out / "seed0" / "eval" / "asr").exists()  # nothing is evaluated from NaN weights
    results = json.loads((out / "results.json").read_text())
    assert results["variants"]["asr"]["diverged"] == {"0": "finetune"}
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| asr |"))
    assert "n/a (1 diverged)" in row
    # A re-run does not retry the diverged run.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[seed0/finetune/asr] reused (diverged)" in again.stdout
