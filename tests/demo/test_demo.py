"""The embedded default at smoke size: the whole study end to end, then a re-run that reuses it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_smoke_study_end_to_end(tmp_path):
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "llava.demo",
        "--smoke",
        "--out",
        str(out),
        "--variants",
        "none,asr,contr-cos-all",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["table"]) == {"none", "asr", "contr-cos-all"}
    for row in results["table"].values():
        assert 0 <= row["ASR WER"][0] and 0 <= row["ST BLEU"][0] <= 100 and 0 <= row["SQA F1"][0] <= 100
    for name in ("results.md", "training_curves.png", "retrieval_per_layer.png", "downstream.png"):
        assert (out / name).stat().st_size > 0
    # Stage 2 really started from each stage-1 projector, and every checkpoint holds only trainable weights.
    for variant in ("asr", "contr-cos-all"):
        log = (out / "seed0" / "finetune" / variant / "train.log").read_text()
        assert "projector initialised from" in log
    preds = list((out / "seed0" / "eval" / "asr" / "ASR").glob("*_preds.jsonl"))
    assert len(preds) == 1 and len(preds[0].read_text().splitlines()) == 8

    t0 = time.perf_counter()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "reused" in again.stdout and "running ..." not in again.stdout
    assert time.perf_counter() - t0 < 60
