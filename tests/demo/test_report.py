"""The study's report from phase directories: cells, diverged seeds, tests, best variant, plots."""

from __future__ import annotations

import json
import math

import pytest

from llava.demo.phases import MARKER, Tracker
from llava.demo.report import (
    PRIMARY,
    balance_table,
    best_variant,
    collect,
    full_data_share,
    main_table,
    write_report,
)
from llava.demo.variants import BUDGETS

T_975_DF2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom (tables)

# variant -> per-seed final dev NLL (ASR, ST, SQA); R@1 at L0
NLL = {
    "none": [(3.0, 4.0, 5.0), (3.1, 4.1, 5.1), (2.9, 3.9, 4.9)],
    "asr": [(2.8, 3.8, 4.8), (2.7, 3.9, 4.8), (2.9, 3.8, 4.7)],
    "contr-cos-all-fixed": [(2.5, 3.5, 4.5), (2.6, 3.6, 4.4), (2.4, 3.5, 4.6)],
}


def _done(path, info):
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(json.dumps({"seconds": 1.0, "status": "ok", **info}))
    return path


def _study(root, diverge_seed=None):
    runs = {}
    for seed in range(3):
        runs[seed] = {}
        for key in [*NLL, "pos-shift"]:
            dirs = {}
            base = root / f"seed{seed}"
            terms = {f"contrastive_layer_{k}": 2.0 - 0.1 * k for k in range(3)}
            dirs["pretrain"] = _done(base / "pretrain" / key, {"final_loss": 1.0, "final_terms": terms})
            r1 = {str(k): {"r1_speech2text": 0.1 * (k + 1) + 0.01 * seed} for k in range(3)}
            dirs["alignment"] = _done(base / "alignment" / key, {"layers": r1})
            if key == "pos-shift":
                runs[seed][key] = dirs
                continue
            if key == "asr" and seed == diverge_seed:
                dirs["finetune"] = _done(base / "finetune" / key, {"status": "diverged", "reason": "nan"})
                runs[seed][key] = dirs
                continue
            dirs["finetune"] = _done(base / "finetune" / key, {"final_loss": 2.0})
            nll = NLL[key][seed]
            curve = {
                "0": {t: {"nll": v + 1.0, "tokens": 10} for t, v in zip(("ASR", "ST", "SQA"), nll)},
                "4": {t: {"nll": v, "tokens": 10} for t, v in zip(("ASR", "ST", "SQA"), nll)},
            }
            metrics = {
                "ASR WER": 90.0 - 10 * nll[0],
                "ST BLEU": 10.0,
                "ST chrF": 20.0,
                "SQA F1": 5.0,
                "SQA EM": 1.0,
            }
            dirs["eval"] = _done(base / "eval" / key, {"metrics": metrics, "curve": curve})
            runs[seed][key] = dirs
    return runs


def test_cells_are_t_intervals_and_a_diverged_seed_is_reported(tmp_path):
    runs = _study(tmp_path, diverge_seed=1)
    data = collect(runs)
    asr = data["asr"]["metrics"][PRIMARY]
    assert math.isnan(asr[1]) and data["asr"]["diverged"] == {1: "finetune"}
    table = main_table(data, 3)
    assert "(1 diverged)" in table.split("| asr |")[1].split("\n")[0]
    # none, mean-over-tasks NLL per seed: 4.0, 4.1, 3.9 -> mean 4.0, sd 0.1
    row = table.split("| none |")[1].split("\n")[0]
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert f"4.000 ± {half:.3f}" in row
    assert "pos-shift" not in table  # stage-1-only variants have no downstream row


def test_best_variant_and_full_data_share(tmp_path):
    runs = _study(tmp_path)
    assert best_variant(runs) == "contr-cos-all-fixed"
    data = collect(runs)
    full_eval = _done(
        tmp_path / "full" / "eval",
        {"metrics": {"ASR WER": 50.0}, "curve": {"8": {t: {"nll": 3.0} for t in ("ASR", "ST", "SQA")}}},
    )
    share = full_data_share(data, {"variant": "contr-cos-all-fixed", "eval": full_eval})
    # seed 0: start 4.5, at 10 % 3.5, at 100 % 3.0 -> (4.5 - 3.5) / (4.5 - 3.0)
    assert share["share"] == pytest.approx(1.0 / 1.5)
    assert share["metrics"]["ASR WER"] == {"10%": pytest.approx(65.0), "100%": 50.0}


def test_balance_table_reads_per_layer_gradient_norms(tmp_path):
    runs = _study(tmp_path)
    history = [
        {"step": 1, "loss": 6.0, "contrastive_layer_0": 2.0, "contrastive_layer_2": 2.1,
         "grad_norm_contrastive_layer_0": 1.0, "grad_norm_contrastive_layer_2": 3.0},
        {"step": 10, "loss": 5.0},
        {"step": 20, "loss": 4.0, "contrastive_layer_0": 1.5, "contrastive_layer_2": 2.0,
         "grad_norm_contrastive_layer_0": 2.0, "grad_norm_contrastive_layer_2": 2.0},
    ]  # fmt: skip
    for seed in runs:
        pre = runs[seed]["contr-cos-all-fixed"]["pretrain"]
        (pre / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    data = collect(runs)
    table = balance_table(data)
    assert "contr-cos-all (fixed)" in table and "steps 1 and 20" in table
    # layer 0: loss 2.000 -> 1.500, grad 1 (share 0.25) -> 2 (share 0.50)
    assert "| 0 | 2.000 | 1.500 | 1 | 0.25 | 2 | 0.50 |" in table
    assert "| 2 | 2.100 | 2.000 | 3 | 0.75 | 2 | 0.50 |" in table


def test_write_report_files_and_significance(tmp_path):
    runs = _study(tmp_path / "runs", diverge_seed=2)
    out = tmp_path / "out"
    out.mkdir()
    payload = write_report(out, runs, None, tmp_path, Tracker(progress=False), BUDGETS["smoke"])
    md = (out / "results.md").read_text()
    assert "Which differences are significant" in md and "R@1" in md
    for name in ("pretraining_at_10pct.png", "learning_curves.png", "alignment_layers.png", "pos_shift.png"):
        assert (out / name).stat().st_size > 0
    rec = [
        r for r in payload["significance"] if r["column"] == PRIMARY and {r["a"], r["b"]} == {"none", "asr"}
    ]
    assert {r["family"] for r in rec} == {"all", "planned"}  # asr vs none is a planned comparison
    assert all(r["test"] == "paired" and r["n"] == 2 for r in rec)  # the diverged seed drops out
    planned = [r for r in payload["significance"] if r["column"] == PRIMARY and r["family"] == "planned"]
    # contr-cos-all (paper) is not in this study: only the planned pairs among its variants are tested
    assert {(r["a"], r["b"]) for r in planned} == {
        ("asr", "none"), ("contr-cos-all-fixed", "none"), ("contr-cos-all-fixed", "asr")
    }  # fmt: skip
    assert json.loads((out / "results.json").read_text())["variants"]["asr"]["diverged"] == {"2": "finetune"}


def test_paths_inside_the_output_directory_are_recorded_relative(tmp_path):
    from llava.demo.report import _relative

    assert _relative(tmp_path / "base", tmp_path) == "base"
    assert _relative(tmp_path / "elsewhere", tmp_path / "out") == str(tmp_path / "elsewhere")
