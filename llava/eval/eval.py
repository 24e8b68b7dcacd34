"""Evaluate a checkpoint on the test sets of a YAML data config.

    python llava/eval/eval.py --model-path CKPT --dataset eval/mustc_tst_common_st.yml --results-dir results/
    python -m llava.eval.eval ... --batch-size 16 --stop-at-newline --num-beams 4 --contrastive

Every partition with `destination: test` is its own test set, named `{type}_{task}_{lang}_{partition}`
(e.g. `MuSTC_ST_en-de_tst-COMMON`), scored by the metric families its task lists
(`llava.dataset.tasks.TASKS[task].metrics`, looked up in `llava.eval.metrics.METRICS`). Per test set,
in `--results-dir`:

- `{stem}_preds.jsonl`: one record per utterance (`llava.inference.predictions`), appended batch by batch;
  a killed run resumes where it stopped.
- `{stem}_run.json`: the fingerprint of what made the predictions (trainable weights, base models, the
  data files, config and prompts, the decoding and prompt settings). Resuming under another fingerprint
  is refused with the list of what changed; `--overwrite` starts the test set over.
- `{stem}_scores.json`: the scores, the counts and the settings used.
- with `--contrastive`, test sets scored by WER: `{stem}_alignment.json` / `.png`, layer-wise
  speech/text alignment (`llava.eval.alignment`).

Counts are exact and a test set never shrinks silently: an utterance whose audio cannot be read gets a
record (`prediction: ""`, `failed: reason`), is scored as an empty output and counted in `num_failed`;
rows a partition's own filters (duration bounds, empty references) leave out are counted once, at
load, in `skipped_at_load`. Everything that can be checked without the model (the config, its files,
the metrics, the prompt options, a writable results directory) is checked before the model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava.dataset.config import ConfigError, DataConfig, load_data_config
from llava.dataset.dataset import SpeechDataset
from llava.dataset.tasks import Task, get_task
from llava.eval.alignment import alignment_eval, write_alignment
from llava.eval.metrics import HEADLINE_KEYS, METRICS, score
from llava.fileio import atomic_write_text
from llava.inference.arguments import (
    add_generation_arguments,
    add_model_arguments,
    add_prompt_arguments,
    load_model_from_args,
    prompt_options_from_args,
    settings_from_args,
)
from llava.inference.fingerprint import json_digest, model_fingerprint, parquet_fingerprint
from llava.inference.generation import GenerationSettings
from llava.inference.predictions import (
    append_predictions,
    check_run_record,
    ensure_writable_dir,
    prediction_record,
    read_predictions,
    record_references,
    write_predictions,
)
from llava.inference.prompts import PromptOptions, inference_collator
from llava.inference.runner import predict

__all__ = [
    "EvalOptions",
    "TestSet",
    "build_test_sets",
    "check_config",
    "evaluate",
    "main",
    "score_predictions",
]

logger = logging.getLogger("llava.eval")


@dataclass
class EvalOptions:
    """How `evaluate` runs: decoding, prompts, batching, resume and extras."""

    settings: GenerationSettings = field(default_factory=GenerationSettings)  # decoding
    prompt: PromptOptions = field(default_factory=PromptOptions)  # prompt layout and system turn
    batch_size: int = 8  # utterances per generate call
    limit: int | None = None  # only the first N utterances of each test set
    contrastive: bool = False  # alignment diagnostics on the WER-scored test sets
    padding_side: str = "left"  # prompt padding for batched generation
    num_workers: int = 0  # DataLoader workers decoding audio
    comet_model: str | None = None  # COMET for ST (name or local dir); None = off
    overwrite: bool = False  # discard existing predictions instead of resuming
    model_path: str | None = None  # the checkpoint: fingerprinted and recorded with the predictions
    progress: bool = True  # tqdm bars

    def check(self) -> None:
        """Raise ValueError naming the flag of the first bad option."""
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"--tokenizer-padding-side must be left or right, got {self.padding_side!r}")
        self.prompt.check()


@dataclass
class TestSet:
    """One test partition: the items of the shared test dataset that belong to it, in file order."""

    __test__ = False  # not a pytest test class, despite the name

    stem: str  # file name stem of its outputs
    task: Task
    field: str  # config location, for messages
    dataset: SpeechDataset  # shared by every test set of the config
    indices: list[int]  # its items in `dataset`
    specs: list[Any]  # its parquet files (llava.dataset.config.SourceSpec)
    skipped_at_load: dict[str, int]  # rows its filters left out when the data was loaded


def check_config(config_path: str | os.PathLike) -> DataConfig:
    """The parsed config, after every check that needs no model: the files exist, there are test
    partitions, and every metric their tasks name is known. Errors name the file and field."""
    cfg = load_data_config(config_path)  # names a missing parquet file
    specs = cfg.for_destination("test")  # names a test task without a metric
    if not specs:
        raise ConfigError(f"{cfg.path.name}: no partition has destination 'test'; nothing to evaluate")
    for spec in specs:
        unknown = [m for m in get_task(spec.task).metrics if m not in METRICS]
        if unknown:
            raise ConfigError(
                f"{spec.field}: task {spec.task} names metrics {unknown} that are not in "
                f"llava.eval.metrics.METRICS (known: {list(METRICS)})"
            )
    return cfg


def _stem(spec: Any) -> str:
    parts = (spec.dataset_type, spec.task, spec.language or "xx", spec.partition.name)
    return "_".join(x.replace(os.sep, "-").replace(" ", "-") for x in parts)


def build_test_sets(
    config: str | os.PathLike | DataConfig,
    sampling_rate: int = 16000,
    prompt: PromptOptions | None = None,
    strict: bool = False,
) -> list[TestSet]:
    """Every `destination: test` partition of a data config as a `TestSet` (in config order).

    The data is loaded once, real durations read from the audio headers; a row whose audio cannot be
    read stays in (it fails at decoding and is scored as an empty prediction) instead of being dropped.
    """
    cfg = config if isinstance(config, DataConfig) else check_config(config)
    prompt = prompt or PromptOptions()
    ds = SpeechDataset.from_config(
        cfg,
        "test",
        train=False,
        sampling_rate=sampling_rate,
        strict=strict,
        keep_unreadable=True,
        prompt_format=prompt.prompt_format,
        instruction_sampling=prompt.instruction_sampling,
    )
    at_load = {name: dict(counts) for name, counts in ds.skips.by_source.items()}  # before any decoding
    groups: dict[tuple, list[int]] = {}
    for i in range(len(ds)):
        spec = ds.source_of(i).spec
        # A globbed partition matching several files is one test set.
        key = (spec.field, spec.dataset_type, spec.task, spec.source_language, spec.target_language)
        groups.setdefault(key, []).append(i)
    specs_of: dict[tuple, list[Any]] = {}
    for spec in cfg.for_destination("test"):
        key = (spec.field, spec.dataset_type, spec.task, spec.source_language, spec.target_language)
        specs_of.setdefault(key, []).append(spec)
    out: list[TestSet] = []
    seen: Counter[str] = Counter()
    for key, specs in specs_of.items():
        stem = _stem(specs[0])
        seen[stem] += 1
        if seen[stem] > 1:  # the same partition listed twice (e.g. two data paths): keep both apart
            stem = f"{stem}_{seen[stem]}"
        skipped: Counter[str] = Counter()
        for spec in specs:
            skipped.update(at_load.get(spec.name, {}))
        if not groups.get(key):
            raise ConfigError(
                f"{specs[0].field}: test set {stem} has no usable rows; skipped: {dict(skipped)}"
            )
        if skipped:
            logger.warning("%s: rows left out at load: %s", stem, dict(skipped))
        out.append(
            TestSet(stem, get_task(specs[0].task), specs[0].field, ds, groups[key], specs, dict(skipped))
        )
    return out


def score_predictions(
    records: dict[str, dict],
    expected_ids: Sequence[str],
    metrics: Sequence[str],
    comet_model: str | None = None,
    where: str = "",
) -> dict[str, Any]:
    """Score the records of `expected_ids` (in that order) with the metric families `metrics`.

    A missing prediction or a record without a reference is an error: scores always cover every
    reference. `where` prefixes error messages (the predictions file).
    """
    missing = [i for i in expected_ids if i not in records]
    if missing:
        raise ValueError(
            f"{where}{len(expected_ids) - len(missing)} predictions for {len(expected_ids)} references "
            f"(missing ids, e.g. {missing[:3]}); refusing to score a partial run"
        )
    recs = [records[i] for i in expected_ids]
    refs = [record_references(r, where) for r in recs]
    out: dict[str, Any] = {"metrics": list(metrics), "num_predictions": len(recs)}
    out.update(
        score(
            metrics,
            [str(r["prediction"]) for r in recs],
            refs,
            sources=[r.get("source") for r in recs],
            comet_model=comet_model,
            ids=list(expected_ids),  # closed-ended scorers name the samples they cannot parse
        )
    )
    out["num_failed"] = sum(1 for r in recs if r.get("failed"))
    out["failed"] = dict(Counter(r["failed"] for r in recs if r.get("failed")))
    return out


def _data_fingerprint(ts: TestSet, ids: list[str]) -> dict[str, Any]:
    spec_settings = []
    for spec in ts.specs:
        d = dataclasses.asdict(spec)
        for key in ("path", "field"):  # where the files lie and the entry's position do not matter
            d.pop(key, None)
        spec_settings.append(d)
    return {
        "files": [parquet_fingerprint(spec.path) for spec in ts.specs],
        "partition": json_digest(spec_settings),
        "instructions": json_digest(ts.dataset.prompts.table),
        "references": json_digest([[i, ts.dataset.reference(k)] for i, k in zip(ids, ts.indices)]),
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    dataset_config_path: str | os.PathLike,
    results_dir: str | os.PathLike,
    options: EvalOptions | None = None,
    **overrides: Any,
) -> dict[str, dict[str, Any]]:
    """Generate, write and score every test set of a data config; returns `{stem: scores}`.

    `model` / `tokenizer` are what `llava.inference.load_model` returns. `options` (default
    `EvalOptions()`), with any of its fields overridden by keyword (`evaluate(..., batch_size=16)`).
    Predictions already in `results_dir` are reused when their fingerprint matches (resume).
    """
    opts = dataclasses.replace(options or EvalOptions(), **overrides)
    opts.check()
    if opts.padding_side != "left":
        logger.warning(
            "padding side %r: batched generation from right-padded prompts is unreliable", opts.padding_side
        )
    cfg = check_config(dataset_config_path)
    results_dir = ensure_writable_dir(results_dir, "--results-dir")
    if opts.prompt.prompt_format is None:
        opts.prompt = dataclasses.replace(opts.prompt, prompt_format=cfg.prompt_format)
    test_sets = build_test_sets(cfg, sampling_rate=model.audio_tower.sampling_rate, prompt=opts.prompt)
    fingerprint = {
        "model": model_fingerprint(model, opts.model_path),
        "settings": {
            "generation": opts.settings.as_dict(),
            "prompt": opts.prompt.as_dict(),
            "padding_side": opts.padding_side,
            "audio_feature_cache": getattr(model.audio_tower, "feature_cache", None) is not None,
        },
    }
    results: dict[str, dict[str, Any]] = {}
    for ts in test_sets:
        scores = _evaluate_test_set(model, tokenizer, ts, results_dir, opts, fingerprint)
        scores["dataset"] = str(dataset_config_path)
        atomic_write_text(
            results_dir / f"{ts.stem}_scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n"
        )
        logger.info("%s: %s", ts.stem, _headline(scores))
        results[ts.stem] = scores
    return results


def _evaluate_test_set(
    model: Any, tokenizer: Any, ts: TestSet, results_dir: Path, opts: EvalOptions, model_print: dict
) -> dict[str, Any]:
    ds = ts.dataset
    ids = [ds.row_id(i) for i in ts.indices]
    n = len(ids) if opts.limit is None else min(opts.limit, len(ids))
    expected = ids[:n]
    preds_path = results_dir / f"{ts.stem}_preds.jsonl"
    fingerprint = {**model_print, "data": _data_fingerprint(ts, ids)}
    if opts.overwrite and preds_path.exists():
        preds_path.unlink()
    check_run_record(
        results_dir / f"{ts.stem}_run.json",
        fingerprint,
        predictions_exist=preds_path.exists(),
        overwrite=opts.overwrite,
    )
    done = read_predictions(preds_path)
    pending = [k for k, rid in zip(ts.indices[:n], expected) if rid not in done]
    if done:
        logger.info("%s: resuming, %d of %d predictions already written", ts.stem, n - len(pending), n)
    if pending:
        collator = inference_collator(tokenizer, model, opts.prompt, padding_side=opts.padding_side)
        with_source = "st" in ts.task.metrics  # COMET reads the transcript as its source text
        for preds in predict(
            model,
            tokenizer,
            ds,
            pending,
            collator,
            opts.settings,
            batch_size=opts.batch_size,
            durations=ds.durations,
            num_workers=opts.num_workers,
            progress=opts.progress,
            desc=ts.stem,
        ):
            records = []
            for p in preds:
                rid = ds.row_id(p.index)
                if p.failed:
                    logger.warning(
                        "%s: %s failed (%s); scored as an empty prediction", ts.stem, rid, p.failed
                    )
                source = p.sample.transcript if (with_source and p.sample is not None) else None
                records.append(
                    prediction_record(
                        rid, ts.task.name, p.text, ds.reference(p.index), source=source, failed=p.failed
                    )
                )
            append_predictions(preds_path, records)
    records = read_predictions(preds_path)
    scores = score_predictions(
        records, expected, ts.task.metrics, comet_model=opts.comet_model, where=f"{preds_path}: "
    )
    # Dataset order, whatever the batching or interruptions were; lines beyond `limit` are kept.
    wanted = set(expected)
    write_predictions(
        preds_path, [records[i] for i in expected] + [r for k, r in records.items() if k not in wanted]
    )
    scores.update(
        stem=ts.stem,
        task=ts.task.name,
        config_field=ts.field,
        model_path=str(Path(opts.model_path).resolve()) if opts.model_path else None,
        generation=opts.settings.as_dict(),
        prompt=opts.prompt.as_dict(),
        num_references=len(ids),
        skipped_at_load=ts.skipped_at_load,
    )
    if opts.contrastive:
        if "asr" in ts.task.metrics:
            samples = (ds[k] for k in ts.indices[:n])
            alignment = alignment_eval(
                model, tokenizer, samples, batch_size=opts.batch_size, progress=opts.progress
            )
            write_alignment(alignment, results_dir / ts.stem)
            scores["alignment_file"] = f"{ts.stem}_alignment.json"
        else:
            logger.info("%s: alignment diagnostics run on WER-scored test sets only", ts.stem)
    return scores


def _headline(scores: dict) -> str:
    parts = [f"{k}={scores[k]:.2f}" for k in HEADLINE_KEYS if isinstance(scores.get(k), float)]
    return " ".join(parts + [f"n={scores['num_predictions']}", f"failed={scores['num_failed']}"])


# ----------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llava/eval/eval.py",
        description="Evaluate a speech LLM checkpoint on the test sets of a data config.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--dataset", required=True, help="YAML data config; every `destination: test` partition is evaluated"
    )
    p.add_argument("--results-dir", required=True, help="where predictions, scores and plots go")
    p.add_argument("--batch-size", type=int, default=8)
    add_generation_arguments(p)
    add_prompt_arguments(p)
    p.add_argument("--tokenizer-padding-side", default="left", choices=["left", "right"])
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N utterances of each test set"
    )
    p.add_argument("--contrastive", action="store_true", help="also write layer-wise alignment diagnostics")
    p.add_argument(
        "--comet-model", default=None, help="COMET model (name or local dir) for ST; off by default"
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding audio")
    p.add_argument(
        "--overwrite", action="store_true", help="discard existing predictions instead of resuming"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Everything that can fail without the model fails here, before minutes of loading.
    try:
        cfg = check_config(args.dataset)
        if args.prompt_format is None:
            args.prompt_format = cfg.prompt_format
        options = EvalOptions(
            settings=settings_from_args(args),
            prompt=prompt_options_from_args(args),
            batch_size=args.batch_size,
            limit=args.limit,
            contrastive=args.contrastive,
            padding_side=args.tokenizer_padding_side,
            num_workers=args.num_workers,
            comet_model=args.comet_model,
            overwrite=args.overwrite,
            model_path=args.model_path,
            progress=not args.no_progress,
        )
        options.check()
        ensure_writable_dir(args.results_dir, "--results-dir")
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    model, tokenizer = load_model_from_args(args)
    results = evaluate(model, tokenizer, args.dataset, args.results_dir, options)
    for stem, scores in results.items():
        print(f"{stem}: {_headline(scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
