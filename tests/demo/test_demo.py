"""The embedded default at smoke size, end to end, as CI runs it: interrupted after its first stage-2
run, resumed without redoing finished phases, then re-run with everything reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _done_markers(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/*/DONE.json")}


def test_smoke_study_interrupted_resumed_and_reused(tmp_path):
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "llava.demo", "--smoke", "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    # 1. Killed (with the training run it started) once the first stage-2 run has finished.
    first = out / "seed0" / "finetune" / "none" / "DONE.json"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 400
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the smoke study did not reach its first stage-2 run"
    finished = _done_markers(out)

    # 2. Resumed to the end: what had finished is reused as is.
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    resumed_s = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == m for p, m in finished.items())
    assert "[seed0/finetune/none] reused" in run.stdout
    assert not list(out.glob("**/*.partial"))

    results = json.loads((out / "results.json").read_text())
    # The study's order (not the order the chains ran in, longest first) in every table.
    assert list(results["variants"]) == ["none", "asr", "contr-cos-all-fixed"]
    for row in results["variants"].values():
        wer = row["metrics"]["ASR WER"]
        assert len(wer) == 2 and all(0 <= v for v in wer.values())
        assert all(0 <= v <= 100 for v in row["metrics"]["ST BLEU"].values())
        nll = row["metrics"]["dev NLL (mean)"]
        assert all(0 < v < 20 for v in nll.values())
        assert set(row["curve"]) == {"0", "2", "4"}  # step 0 and the two checkpoints
        assert len(row["r1"]) >= 2  # R@1 at the embeddings and deeper layers
    assert results["full_data"] is not None
    for name in ("results.md", "significance.md", "pretraining_at_10pct.png", "learning_curves.png",
                 "alignment_layers.png", "training_curves.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "± " in md and "Which differences are significant" in md
    # Stage 2 really started from each stage-1 projector; the fixed variant weighted its layers.
    log = (out / "seed1" / "finetune" / "contr-cos-all-fixed" / "train.log").read_text()
    assert "projector initialised from" in log
    pre = json.loads((out / "seed1" / "pretrain" / "contr-cos-all-fixed" / "DONE.json").read_text())
    assert pre["script"] == "pretrain-contr-cos-all.sh" and "--contrastive_layer_weights" in pre["args"]
    # The default stage 2 trains LoRA adapters on the LLM beside the projector; both are saved.
    from llava.model.checkpoint import read_weights

    saved = read_weights(out / "seed0" / "finetune" / "asr")
    assert any(k.startswith("projector.") for k in saved) and any(".lora_B." in k for k in saved)
    preds = list((out / "seed0" / "eval" / "asr" / "ASR").glob("*_preds.jsonl"))
    assert len(preds) == 1 and len(preds[0].read_text().splitlines()) == 4

    # 3. Everything reused: nothing runs again (the finished corpus starts no synthesiser process).
    corpus_log = (out / "corpus.log").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0
    assert "reused" in again.stdout and "running ..." not in again.stdout
    assert (out / "corpus.log").stat().st_mtime_ns == corpus_log
    assert time.perf_counter() - t0 < min(60, resumed_s)
