"""Evaluate a checkpoint on the test sets of a YAML data config.

    python llava/eval/eval.py --model-path CKPT --dataset eval/mustc_tst_common.yml --results-dir results/
    python -m llava.eval.eval ... --batch-size 16 --stop-at-newline --contrastive

Every partition with `destination: test` is its own test set, named `{type}_{task}_{lang}_{partition}`
(e.g. `MuSTC_ST_en-de_tst-COMMON`). Per test set, in `--results-dir`:

- `{stem}_preds.jsonl`: one JSON object per utterance (`id`, `task`, `prediction`, `reference`, or
  `references` for SQA, `source` for ST), appended and fsynced batch by batch. A killed run resumes:
  the ids already there are skipped (a truncated last line is dropped and redone). When a test set is
  complete the file is rewritten in dataset order, so an interrupted and an uninterrupted run give
  the same file.
- `{stem}_scores.json`: `llava.eval.metrics.score` of the task plus counts and the settings used.
- with `--contrastive`, ASR test sets only: `{stem}_alignment.json` and `{stem}_alignment.png`,
  layer-wise speech/text alignment (`alignment_eval`).

An utterance whose audio cannot be decoded, or whose prompt does not fit the LLM, still gets a line
(`prediction: ""`, `failed: reason`) and is scored as an empty output, and the count is reported
(`num_failed`), so scores are always on every reference. Generation settings are stored next to the
predictions (`{stem}_run.json`); resuming with other settings is an error (`--overwrite` starts over).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from llava.dataset.collator import SpeechCollator
from llava.dataset.config import ConfigError, load_data_config
from llava.dataset.dataset import SpeechDataset
from llava.dataset.prompts import PromptBank
from llava.dataset.skips import BAD_AUDIO, EXCEEDS_MAX_LENGTH, SkipCounter
from llava.dataset.sources import ParquetSource
from llava.eval.alignment import NO_LENGTH_LIMIT, alignment_eval, write_alignment
from llava.eval.generation import (
    GenerationSettings,
    add_generation_arguments,
    add_model_arguments,
    generate_batch,
    load_model_from_args,
    settings_from_args,
    stop_token_ids,
)
from llava.eval.metrics import SCORERS, score
from llava.fileio import atomic_write_text

__all__ = [
    "EvalOptions",
    "TestSet",
    "alignment_eval",
    "build_test_sets",
    "evaluate",
    "main",
    "read_predictions",
    "score_predictions",
    "write_alignment",
]

logger = logging.getLogger("llava.eval")

# Field of the raw parquet row that holds the reference, per task (for rows whose audio failed).
_REFERENCE_FIELD = {"ASR": "transcript", "ST": "translation", "SQA": "answer", "INSTRUCT": "target"}
# No prompt + audio fits this many tokens: the collator must never drop a test utterance for length.


# ----------------------------------------------------------------------------------- test sets
@dataclass
class TestSet:
    """One test partition of the data config, as a dataset in fixed order with fixed prompts."""

    __test__ = False  # not a pytest test class, despite the name

    stem: str  # file name stem of its outputs
    task: str  # ASR | ST | SQA | INSTRUCT
    dataset: SpeechDataset
    field: str  # config location, for messages


def _stem(dataset_type: str, task: str, src: str | None, tgt: str | None, partition: str) -> str:
    lang = f"{src}-{tgt}" if tgt else (src or "xx")
    return "_".join(x.replace(os.sep, "-").replace(" ", "-") for x in (dataset_type, task, lang, partition))


def build_test_sets(
    config_path: str | os.PathLike, sampling_rate: int = 16000, strict: bool = False
) -> list[TestSet]:
    """Every `destination: test` partition of a data config as a `TestSet` (files checked first)."""
    cfg = load_data_config(config_path)  # raises ConfigError naming a missing parquet file
    specs = cfg.for_destination("test")
    if not specs:
        raise ConfigError(f"{cfg.path.name}: no partition has destination 'test'; nothing to evaluate")
    prompts = PromptBank.load(cfg.prompts_path)
    groups: dict[tuple, list] = {}
    for spec in specs:  # a globbed partition may have several files: one test set
        key = (spec.field, spec.dataset_type, spec.task, spec.source_language, spec.target_language)
        groups.setdefault(key, []).append(spec)
    out: list[TestSet] = []
    seen: dict[str, int] = {}
    for (where, dtype, task, src, tgt), group in groups.items():
        stem = _stem(dtype, task, src, tgt, group[0].partition.name)
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:  # the same partition listed twice (e.g. two data paths): keep both apart
            stem = f"{stem}_{seen[stem]}"
        skips = SkipCounter()
        sources = [
            ParquetSource(spec, skips=skips, strict=strict, sampling_rate=sampling_rate) for spec in group
        ]
        ds = SpeechDataset(sources, prompts, train=False, strict=strict, skips=skips)
        if len(ds) == 0:
            raise ConfigError(f"{where}: test set {stem} has no usable rows; {skips.summary()}")
        if skips:
            logger.warning("%s: %s", stem, skips.summary())
        out.append(TestSet(stem, task, ds, where))
    return out


def _row_id(ds: SpeechDataset, i: int) -> str:
    return ds.source_of(i).row_id(int(ds.index[i, 1]))


def _reference_of_row(ds: SpeechDataset, i: int, task: str) -> Any:
    """The reference of dataset item i read from its metadata (no audio decoding)."""
    src, k = ds.source_of(i), int(ds.index[i, 1])
    value = src.text(_REFERENCE_FIELD[task], k)
    if task == "SQA":
        answers = value if isinstance(value, list) else [value]
        return [str(a).strip() for a in answers if a is not None and str(a).strip()]
    return str(value).strip()


def _record(task: str, sample_id: str, prediction: str, reference: Any, source: str | None) -> dict:
    rec: dict[str, Any] = {"id": sample_id, "task": task, "prediction": prediction}
    if task == "SQA":
        rec["references"] = reference
    else:
        rec["reference"] = reference
    if task == "ST" and source:
        rec["source"] = source
    return rec


# ----------------------------------------------------------------------------------- prediction files
def read_predictions(path: str | os.PathLike, repair: bool = True) -> dict[str, dict]:
    """Records of a `_preds.jsonl` file by id. A truncated last line (a run killed mid-write) is
    ignored and, with `repair`, cut from the file so that appending continues on a clean line.
    A malformed line anywhere else is an error."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: dict[str, dict] = {}
    keep = 0  # bytes of the file that hold complete records
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "id" not in rec or "prediction" not in rec:
                    raise ValueError("not a prediction record (needs id and prediction)")
            except ValueError as exc:
                if any(x.strip() for x in lines[n:]):
                    raise ValueError(f"{path}: line {n} is not a valid prediction record: {exc}") from None
                logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(line))
                break
            records[str(rec["id"])] = rec
        keep += len(line) + (1 if n < len(lines) else 0)
    if repair:
        if keep < len(data):
            with open(path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
        elif data and not data.endswith(b"\n"):  # a complete last record without its newline
            _append_bytes(path, b"\n")
    return records


def _append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _append(path: Path, records: Iterable[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def score_predictions(
    records: dict[str, dict], expected_ids: Sequence[str], task: str, comet_model: str | None = None
) -> dict[str, Any]:
    """Score the records of `expected_ids` (in that order); a missing prediction is an error."""
    missing = [i for i in expected_ids if i not in records]
    if missing:
        raise ValueError(
            f"{len(expected_ids) - len(missing)} predictions for {len(expected_ids)} references "
            f"(missing ids, e.g. {missing[:3]}); refusing to score a partial run"
        )
    recs = [records[i] for i in expected_ids]
    preds = [r["prediction"] for r in recs]
    refs = [r["references"] if task == "SQA" else r["reference"] for r in recs]
    out: dict[str, Any] = {"task": task, "num_predictions": len(preds)}
    if task not in SCORERS:
        logger.warning("no metric for task %s; predictions are written but not scored", task)
        out["note"] = f"no metric for task {task}"
    else:
        kwargs = {}
        if task == "ST" and comet_model:
            kwargs = {"srcs": [r.get("source", "") for r in recs], "comet_model": comet_model}
        out.update(score(task, preds, refs, **kwargs))
    out["num_failed"] = sum(1 for r in recs if r.get("failed"))
    return out


# ----------------------------------------------------------------------------------- batching
class _Indexed(Dataset):
    """Yields (index, sample) so items that fail to decode (None) keep their identity."""

    def __init__(self, ds: SpeechDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, dict | None]:
        return i, self.ds[i]


class _EvalCollate:
    def __init__(self, collator: SpeechCollator):
        self.collator = collator

    def __call__(self, items: list[tuple[int, dict | None]]) -> tuple[list[tuple[int, dict | None]], dict]:
        return items, self.collator([s for _, s in items])


def _reference(sample: dict, task: str) -> Any:
    if task == "SQA":
        return list(sample.get("references") or [sample["target"]])
    return sample["target"]


def _run_generation(
    model: Any, tokenizer: Any, ts: TestSet, pending: list[int], preds_path: Path, opts: EvalOptions
) -> None:
    collator = SpeechCollator(
        tokenizer,
        model.num_audio_tokens,
        inference=True,
        padding_side=opts.padding_side,
        max_length=NO_LENGTH_LIMIT,
    )
    stops = stop_token_ids(tokenizer, model)
    # Longest first: similar lengths share a batch (little padding) and memory peaks early.
    durations = ts.dataset.durations
    order = sorted(pending, key=lambda i: (-float(durations[i]), i))
    bs = opts.batch_size
    batches = [order[s : s + bs] for s in range(0, len(order), bs)]
    loader = DataLoader(
        _Indexed(ts.dataset),
        batch_sampler=batches,
        collate_fn=_EvalCollate(collator),
        num_workers=opts.num_workers,
    )
    bar = tqdm(total=len(order), desc=ts.stem, unit="utt", disable=not opts.progress)
    for items, batch in loader:
        texts = generate_batch(model, tokenizer, batch, opts.settings, stops)
        by_id = dict(zip(batch["ids"], texts))
        records = []
        for i, sample in items:
            rid = _row_id(ts.dataset, i)
            if sample is not None and rid in by_id:
                reference = _reference(sample, ts.task)
                rec = _record(ts.task, rid, by_id[rid], reference, sample.get("transcript"))
            else:
                # The collator dropped it: undecodable audio (None) or, defensively, a length overflow.
                reason = BAD_AUDIO if sample is None else EXCEEDS_MAX_LENGTH
                logger.warning("%s: %s failed (%s); scored as an empty prediction", ts.stem, rid, reason)
                source = ts.dataset.source_of(i).text("transcript", int(ts.dataset.index[i, 1]))
                rec = _record(ts.task, rid, "", _reference_of_row(ts.dataset, i, ts.task), source)
                rec["failed"] = reason
            records.append(rec)
        _append(preds_path, records)
        bar.update(len(items))
    bar.close()


def _check_run_settings(path: Path, settings: dict, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{path}: the predictions there were made with other settings ({', '.join(changed)}); "
                "use another --results-dir, or --overwrite to start this test set over"
            )
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------- evaluation
@dataclass
class EvalOptions:
    """How `evaluate` runs (see its docstring)."""

    settings: GenerationSettings = field(default_factory=GenerationSettings)  # decoding
    batch_size: int = 8  # utterances per generate call
    limit: int | None = None  # only the first N utterances of each test set
    contrastive: bool = False  # alignment diagnostics on ASR test sets
    padding_side: str = "left"  # prompt padding for batched generation
    num_workers: int = 0  # DataLoader workers decoding audio
    comet_model: str | None = None  # COMET for ST (name or local dir); None = off
    overwrite: bool = False  # discard existing predictions instead of resuming
    model_path: str | None = None  # recorded with the predictions
    progress: bool = True  # tqdm bars


def evaluate(
    model: Any,
    tokenizer: Any,
    dataset_config_path: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    contrastive: bool = False,
    padding_side: str = "left",
    num_workers: int = 0,
    comet_model: str | None = None,
    overwrite: bool = False,
    model_path: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Generate, write and score every test set of a data config; returns `{stem: scores}`.

    `model` / `tokenizer` are what `llava.model.builder.load_pretrained_model` returns. Predictions
    already in `results_dir` are reused (resume); `overwrite` discards them. `limit` evaluates only the
    first N utterances of each test set (in file order). `settings` defaults to greedy decoding with
    at most 200 new tokens.
    """
    opts = EvalOptions(
        settings=settings or GenerationSettings(),
        batch_size=batch_size,
        limit=limit,
        contrastive=contrastive,
        padding_side=padding_side,
        num_workers=num_workers,
        comet_model=comet_model,
        overwrite=overwrite,
        model_path=model_path,
        progress=progress,
    )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if padding_side != "left":
        logger.warning(
            "padding side %r: batched generation from right-padded prompts is unreliable", padding_side
        )
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    test_sets = build_test_sets(dataset_config_path, sampling_rate=model.audio_tower.sampling_rate)
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    try:
        for ts in test_sets:
            scores = _evaluate_test_set(model, tokenizer, ts, results_dir, opts)
            scores["dataset"] = str(dataset_config_path)
            atomic_write_text(
                results_dir / f"{ts.stem}_scores.json",
                json.dumps(scores, indent=2, ensure_ascii=False) + "\n",
            )
            logger.info("%s: %s", ts.stem, _headline(scores))
            results[ts.stem] = scores
    finally:
        model.train(was_training)
    return results


def _evaluate_test_set(
    model: Any, tokenizer: Any, ts: TestSet, results_dir: Path, opts: EvalOptions
) -> dict[str, Any]:
    ds = ts.dataset
    n = len(ds) if opts.limit is None else min(opts.limit, len(ds))
    expected = [_row_id(ds, i) for i in range(n)]
    preds_path = results_dir / f"{ts.stem}_preds.jsonl"
    if opts.overwrite and preds_path.exists():
        preds_path.unlink()
    model_path = str(Path(opts.model_path).resolve()) if opts.model_path else None
    run_settings = {
        "generation": opts.settings.as_dict(),
        "model_path": model_path,
        "padding_side": opts.padding_side,
    }
    _check_run_settings(results_dir / f"{ts.stem}_run.json", run_settings, opts.overwrite)
    done = read_predictions(preds_path)
    pending = [i for i in range(n) if expected[i] not in done]
    if done:
        logger.info("%s: resuming, %d of %d predictions already written", ts.stem, n - len(pending), n)
    if pending:
        _run_generation(model, tokenizer, ts, pending, preds_path, opts)
    records = read_predictions(preds_path)
    scores = score_predictions(records, expected, ts.task, comet_model=opts.comet_model)
    # Dataset order, whatever the batching or interruptions were; lines beyond `limit` are kept.
    wanted = set(expected)
    ordered = [records[i] for i in expected] + [r for k, r in records.items() if k not in wanted]
    atomic_write_text(preds_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    scores.update(
        stem=ts.stem,
        config_field=ts.field,
        model_path=model_path,
        generation=opts.settings.as_dict(),
        skipped_at_load=ds.skips.as_dict(),
    )
    if opts.contrastive:
        if ts.task == "ASR":
            samples = (ds[i] for i in range(n))
            alignment = alignment_eval(
                model, tokenizer, samples, batch_size=opts.batch_size, progress=opts.progress
            )
            write_alignment(alignment, results_dir / ts.stem)
            scores["alignment_file"] = f"{ts.stem}_alignment.json"
        else:
            logger.info("%s: alignment diagnostics run on ASR test sets only", ts.stem)
    return scores


def _headline(scores: dict) -> str:
    keys = ("wer", "wer_utt_mean", "bleu", "chrf", "comet", "exact_match", "f1")
    parts = [f"{k}={scores[k]:.2f}" for k in keys if isinstance(scores.get(k), float)]
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
    p.add_argument("--tokenizer-padding-side", default="left", choices=["left", "right"])
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N utterances of each test set"
    )
    p.add_argument(
        "--contrastive", action="store_true", help="also write layer-wise alignment diagnostics (ASR sets)"
    )
    p.add_argument(
        "--comet-model", default=None, help="COMET model (name or local dir) for ST; off by default"
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding audio")
    p.add_argument(
        "--overwrite", action="store_true", help="discard existing predictions instead of resuming"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    # A malformed config or a missing parquet file fails here, before the model is loaded.
    if not load_data_config(args.dataset).for_destination("test"):
        raise SystemExit(f"{args.dataset}: no partition has destination 'test'; nothing to evaluate")
    model, tokenizer = load_model_from_args(args)
    results = evaluate(
        model,
        tokenizer,
        args.dataset,
        args.results_dir,
        settings=settings,
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
    for stem, scores in results.items():
        print(f"{stem}: {_headline(scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
