"""The study's evaluation of one stage-2 run, in-process (one model load for everything):

- test-set scores of the final model with the same `evaluate` as `llava/eval/eval.py`: ASR WER (the
  paper's when the scorer provides it), ST BLEU / chrF, SQA F1 / exact match;
- teacher-forced dev NLL per task at step 0 (the stage-1 projector), at each intermediate
  checkpoint, and at the end: the stage-2 learning curve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llava.demo.curves import curve_steps, dev_batches, dev_nll, dev_rows
from llava.demo.phases import DivergedError, Tracker

# (table column, task, score keys tried in order, higher is better)
METRICS = [
    ("ASR WER", "ASR", ("wer_paper", "wer"), False),
    ("ST BLEU", "ST", ("bleu",), True),
    ("ST chrF", "ST", ("chrf",), True),
    ("SQA F1", "SQA", ("f1",), True),
    ("SQA EM", "SQA", ("exact_match",), True),
]
TEST_CONFIGS = {"ASR": "eval_asr.yml", "ST": "eval_st.yml", "SQA": "eval_sqa.yml"}


def pick_score(scores: dict, keys: tuple[str, ...]) -> float | None:
    """The first of `keys` present in a scores dict (scorers name their variants differently)."""
    for key in keys:
        if isinstance(scores.get(key), (int, float)):
            return float(scores[key])
    return None


def load_stage_weights(model: Any, ckpt: Path) -> None:
    """Put the trainable weights of a stage-1 or stage-2 checkpoint into `model`: the projector and,
    when the model carries LoRA adapters, theirs. A checkpoint without adapter weights (the stage-1
    projector, step 0 of the curve) switches the adapters off: every LoRA B matrix is zeroed, which is
    the model before stage 2 (LoRA starts from B = 0)."""
    import torch

    from llava.model.checkpoint import load_into, read_weights

    params = dict(model.named_parameters())
    lora = [n for n in params if ".lora_" in n]
    weights = read_weights(ckpt)
    has_lora = any(n in weights for n in lora)
    names = [n for n in params if n.startswith("projector.")] + (lora if has_lora else [])
    try:
        load_into(model, {k: v for k, v in weights.items() if k in names}, source=str(ckpt), expected=names)
    except ValueError as exc:
        if "non-finite" in str(exc):
            raise DivergedError(str(exc)) from exc
        raise
    if not has_lora:
        with torch.no_grad():
            for n in lora:
                if ".lora_B." in n:
                    params[n].zero_()


def evaluate_run(
    out: Path,
    corpus: Path,
    pretrained: Path,
    finetuned: Path,
    steps: int,
    budget: Any,
    cache: Path | None,
    tracker: Tracker,
    name: str,
) -> dict:
    """Scores and learning curve of the run in `finetuned` (stage 1 in `pretrained`); per-test-set
    predictions and scores are written under `out/<task>/`. Returns the DONE.json fields."""
    from llava.eval.eval import evaluate
    from llava.inference import GenerationSettings, load_model

    clock = time.perf_counter()
    sections: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        sections[name] = sections.get(name, 0.0) + now - clock
        clock = now

    try:
        model, tokenizer = load_model(finetuned, audio_feature_cache=cache)
    except ValueError as exc:
        if "non-finite" in str(exc):
            raise DivergedError(str(exc)) from exc
        raise
    lap("load")
    ds, rows, system = dev_rows(corpus / "configs" / "finetune_mixed.yml", budget.nll_limit)
    batches = dev_batches(model, tokenizer, ds, rows, 16, system_prompt=system)
    lap("dev batches")
    points = [0, *curve_steps(steps, budget.curve_points)]
    n_rows = sum(len(v) for v in rows.values())
    bar = tracker.bar(name, len(TEST_CONFIGS) * budget.eval_limit + len(points) * n_rows, "utt")
    try:
        scores: dict[str, dict] = {}
        for task, config in TEST_CONFIGS.items():
            result = evaluate(
                model,
                tokenizer,
                corpus / "configs" / config,
                out / task,
                settings=GenerationSettings(max_new_tokens=budget.max_new_tokens),
                batch_size=16,
                limit=budget.eval_limit,
                model_path=str(finetuned),
                progress=False,
            )
            (scores[task],) = result.values()  # one test set per config
            done = int(scores[task].get("num_predictions", budget.eval_limit))
            bar.total -= budget.eval_limit - done  # a test set smaller than the limit
            bar.update(done)
            lap(f"generate {task}")
        curve: dict[int, dict[str, dict[str, float]]] = {}
        for step in points:
            ckpt = (
                pretrained if step == 0 else finetuned if step == steps else finetuned / f"checkpoint-{step}"
            )
            load_stage_weights(model, ckpt)
            curve[step] = dev_nll(model, batches, on_batch=bar.update)
            lap("dev nll")
    finally:
        bar.close()
    table = {title: pick_score(scores[task], keys) for title, task, keys, _ in METRICS}
    final = curve[steps]
    summary = " ".join(f"{k}={v:.1f}" for k, v in table.items() if v is not None)
    summary += " | dev NLL " + " ".join(f"{t}={v['nll']:.3f}" for t, v in final.items())
    return {
        "metrics": table,
        "wer_key": next((k for k in METRICS[0][2] if k in scores["ASR"]), None),
        "curve": {str(k): v for k, v in curve.items()},
        "section_seconds": sections,
        "summary": summary,
    }
