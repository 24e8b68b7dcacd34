"""Batch inference by task on audio files, resumable: `python -m llava.inference`.

    python -m llava.inference --model-path CKPT --task asr --audios clips/ --out preds.jsonl
    python -m llava.inference --model-path CKPT --task st --source-lang en --target-lang de \\
        --audios list.txt more/ --out st.jsonl --batch-size 16 --num-beams 4

`--task` is a task of the registry (`llava.dataset.tasks.TASKS`, any case); its user turn is built as
in training and evaluation (`--prompt-format`, default the paper's layout). `--source-lang` /
`--target-lang` are required when the task's instruction names a language; `--question` fills a task's
question (SQA), `--instruction` its own instruction (INSTRUCT). `--audios` takes directories, audio
files and lists of paths (`llava.inference.audio_files`).

`--out` receives one JSON line per file, `{"id", "audio", "task", "prediction"}` (plus `failed` and
`error` for a file that could not be read), appended batch by batch and rewritten in input order at
the end. Like evaluation, a killed run resumes: `{out stem}_run.json` records the fingerprint of the
model and settings, and resuming under another one is refused (`--overwrite` starts over); a file
whose size or modification time changed since its line was written is done again. Unreadable files
are counted and reported; the rest is processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from llava.dataset.prompts import Prompter
from llava.dataset.tasks import TASKS, Task, get_task
from llava.inference.arguments import (
    add_generation_arguments,
    add_model_arguments,
    add_prompt_arguments,
    load_model_from_args,
    prompt_options_from_args,
    settings_from_args,
)
from llava.inference.audio_files import AudioFiles, AudioInput, list_audio_inputs
from llava.inference.fingerprint import model_fingerprint
from llava.inference.predictions import (
    append_predictions,
    check_run_record,
    ensure_writable_dir,
    read_predictions,
    write_predictions,
)
from llava.inference.prompts import inference_collator
from llava.inference.runner import predict

logger = logging.getLogger("llava.inference")

# Placeholder language codes: an instruction that still holds one after rendering names that language.
_NO_SOURCE, _NO_TARGET = "\x00source", "\x00target"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m llava.inference", description="Batch inference by task on audio files (resumable)."
    )
    add_model_arguments(p)
    p.add_argument("--task", required=True, help=f"one of {list(TASKS)} (any case)")
    p.add_argument(
        "--audios",
        nargs="+",
        required=True,
        metavar="DIR_OR_LIST",
        help="directories, audio files or path lists",
    )
    p.add_argument("--out", required=True, help="predictions file (JSON lines)")
    p.add_argument("--source-lang", default=None, help="language of the speech (e.g. en)")
    p.add_argument("--target-lang", default=None, help="language to answer in (e.g. de for ST)")
    p.add_argument("--question", default=None, help="the question, for a task that asks one (SQA)")
    p.add_argument(
        "--instruction", default=None, help="the instruction, for a task that takes its own (INSTRUCT)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding audio")
    p.add_argument(
        "--overwrite", action="store_true", help="discard existing predictions instead of resuming"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_arguments(p)
    add_prompt_arguments(p)
    return p.parse_args(argv)


def task_row(task: Task, question: str | None, instruction: str | None) -> dict[str, str]:
    """The row fields the task's prompt reads, from --question / --instruction (errors name them)."""
    row: dict[str, str] = {}
    if question is not None:
        if task.question_field is None:
            raise ValueError(f"--question: task {task.name} asks no question")
        row[task.question_field] = question
    elif task.question_field is not None:
        raise ValueError(f"--question is required by task {task.name} ({task.description})")
    if instruction is not None:
        if task.instruction_field is None:
            raise ValueError(f"--instruction: task {task.name} takes its instruction from the prompt file")
        row[task.instruction_field] = instruction
    return row


def check_languages(
    prompter: Prompter, task: Task, row: dict, source: str | None, target: str | None
) -> None:
    """Render the task's instructions with placeholder languages: one left in a text that may be used
    (the first with fixed sampling, any with random) is a missing flag."""
    given = task.given_instruction(row)
    texts = (
        [given]
        if given is not None
        else prompter.bank.instructions(
            task.name, source_language=source or _NO_SOURCE, target_language=target or _NO_TARGET
        )
    )
    if prompter.instruction_sampling == "fixed":
        texts = texts[:1]
    for code, flag in ((_NO_SOURCE, "--source-lang"), (_NO_TARGET, "--target-lang")):
        if any(code in text for text in texts):
            raise ValueError(f"{flag} is required by task {task.name}: its instruction names that language")


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _record(item: AudioInput, task: str, text: str, failed: str | None, error: str | None) -> dict:
    rec = {"id": item.id, "audio": str(item.path.resolve()), "task": task, "prediction": text}
    rec["audio_stamp"] = _stamp(item.path)
    if failed:
        rec.update(failed=failed, error=error or failed)
    return rec


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    try:  # everything that can fail without the model fails here
        task = get_task(args.task.upper())
        settings = settings_from_args(args)
        prompt = prompt_options_from_args(args)
        row = task_row(task, args.question, args.instruction)
        prompter = prompt.prompter()
        prompter.check_tasks([task])
        check_languages(prompter, task, row, args.source_lang, args.target_lang)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        listing = list_audio_inputs(args.audios)
        ensure_writable_dir(out.parent, "--out")
    except (KeyError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}") from None
    logger.info("inputs: %s", listing.summary())
    model, tokenizer = load_model_from_args(args)

    fingerprint = {
        "model": model_fingerprint(model, args.model_path),
        "settings": {
            "task": task.name,
            "row": row,
            "languages": [args.source_lang, args.target_lang],
            "generation": settings.as_dict(),
            "prompt": prompt.as_dict(),
            "instructions": prompter.bank.table.get(task.name),
            "audio_feature_cache": model.audio_tower.feature_cache is not None,
        },
    }
    if args.overwrite and out.exists():
        out.unlink()
    check_run_record(
        out.with_name(out.stem + "_run.json"),
        fingerprint,
        predictions_exist=out.exists(),
        overwrite=args.overwrite,
    )
    done = read_predictions(out)
    dataset = AudioFiles(
        listing.items,
        task,
        prompter,
        sampling_rate=model.audio_tower.sampling_rate,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        row=row,
        seed=settings.seed,
    )
    # A line is reused only for the same file unchanged since it was written.
    pending = [
        i
        for i, item in enumerate(listing.items)
        if done.get(item.id, {}).get("audio_stamp") != _stamp(item.path)
    ]
    if len(pending) < len(listing.items):
        logger.info(
            "resuming: %d of %d files already done", len(listing.items) - len(pending), len(listing.items)
        )
    collator = inference_collator(tokenizer, model, prompt)
    for preds in predict(
        model,
        tokenizer,
        dataset,
        pending,
        collator,
        settings,
        batch_size=args.batch_size,
        durations=dataset.size_hint(),
        num_workers=args.num_workers,
        progress=not args.no_progress,
        desc="inference",
    ):
        records = [_record(listing.items[p.index], task.name, p.text, p.failed, p.error) for p in preds]
        for rec in records:
            if rec.get("failed"):
                logger.warning("%s: %s", rec["id"], rec["error"])
        append_predictions(out, records)

    records = read_predictions(out)
    ids = [item.id for item in listing.items]
    wanted = set(ids)
    write_predictions(out, [records[i] for i in ids] + [r for k, r in records.items() if k not in wanted])
    failed = Counter(records[i]["failed"] for i in ids if records[i].get("failed"))
    summary = {
        "files": len(ids),
        "predicted": len(ids) - sum(failed.values()),
        "failed": dict(failed),
        "not_audio": dict(listing.not_audio),
        "inputs_without_audio": listing.empty_inputs,
        "out": str(out),
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
