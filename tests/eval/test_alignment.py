"""Layer-wise alignment over samples: plain records or Samples, skipping what has no transcript."""

from __future__ import annotations

import json

import numpy as np

from llava.eval.alignment import alignment_eval, write_alignment

TEXTS = ["the quick brown fox", "a small cat sleeps", "one two three", "the lazy dog"]


def test_alignment_eval_on_samples(tiny_model, tmp_path):
    model, tok = tiny_model
    rng = np.random.default_rng(0)
    samples = [
        {"audio": (0.1 * rng.standard_normal(4000 + 1000 * i)).astype(np.float32), "transcript": text}
        for i, text in enumerate(TEXTS)
    ]
    samples.insert(2, None)
    samples.append({"audio": samples[0]["audio"], "transcript": ""})  # skipped: no transcript
    out = alignment_eval(model, tok, samples, layers="0,last", batch_size=3)
    assert sorted(out) == [0, 2] and out[0]["num_pairs"] == len(TEXTS)
    assert all(0 <= m["r1_speech2text"] <= 1 for m in out.values())
    # The batching does not change the result.
    again = alignment_eval(model, tok, samples, layers="0,last", batch_size=8)
    assert all(abs(again[k]["cos_gap"] - out[k]["cos_gap"]) < 1e-5 for k in out)
    write_alignment(out, tmp_path / "x")
    assert sorted(json.loads((tmp_path / "x_alignment.json").read_text())["layers"]) == ["0", "2"]
    assert (tmp_path / "x_alignment.png").stat().st_size > 0
