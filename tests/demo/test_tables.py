"""The study's per-seed table: every seed's own value, a diverged seed named, absent seeds left blank."""

from __future__ import annotations

import math

from llava.demo.tables import PRIMARY, seed_table


def _row(wer: dict[int, float], nll: dict[int, float]) -> dict:
    return {"metrics": {"ASR WER": wer, PRIMARY: nll}, "r1": {}, "curve": {}}


def test_seed_table_lists_each_seed_and_names_a_diverged_one():
    data = {
        "none": _row({0: 80.94, 1: 71.3, 2: 69.25}, {0: 1.9031, 1: 1.7792, 2: 1.82}),
        "asr": _row({0: 23.84, 1: math.nan, 2: 24.47}, {0: 0.9756, 1: math.nan, 2: 1.1181}),
        "contr-cos-emb": _row({0: 55.2}, {0: 1.4552}),  # a variant run for one seed only
        "pos-shift": {"metrics": {}, "r1": {0: {0: 88.0}}, "curve": {}},  # stage 1 only: no row
    }
    table = seed_table(data)
    lines = table.splitlines()
    assert lines[0] == "| pretraining | measure | seed 0 | seed 1 | seed 2 |"
    assert "| none | ASR WER | 80.9 | 71.3 | 69.2 |" in lines  # one decimal, as the main table
    assert f"| none | {PRIMARY} | 1.903 | 1.779 | 1.820 |" in lines
    assert "| asr | ASR WER | 23.8 | diverged | 24.5 |" in lines
    assert "| contr-cos-emb | ASR WER | 55.2 |  |  |" in lines
    assert not any("pos-shift" in line or "BLEU" in line for line in lines)  # no empty measures


def test_seed_table_is_empty_without_downstream_results():
    assert seed_table({"pos-shift": {"metrics": {}, "r1": {}, "curve": {}}}) == ""
