"""Speaker-attribute tasks from the espeak-ng voices of a built synthetic corpus (closed-ended tasks
for the LTU-AS-style curriculum, `scripts/curriculum/`).

    python -m llava.demo.corpus.attributes --corpus DIR [--out DIR]

Every MuST-C-style utterance of the corpus was spoken with a voice, a rate (words per minute) and a
pitch drawn by `plan_corpus(size, seed)`; the corpus records its size and seed in `manifest.json` and
each utterance's key in its audio `path`, so re-planning recovers the exact settings of every row
without synthesising anything (each row's text is checked against the plan). From them:

```
OUT/ATTRIBUTES/gender_{train,dev,test}.parquet   audio, question, label (female | male), duration, voice
OUT/ATTRIBUTES/rate_{train,dev,test}.parquet     audio, question, label (slow | medium | fast),
                                                 rate_question, value (words per minute), duration, rate
OUT/configs/attributes_cls.yml     CLS: gender + rate bucket (train; dev as named eval sets)
OUT/configs/attributes_all.yml     CLS + REG (rate in wpm) + the corpus's ASR, ST and SQA
OUT/configs/eval_attributes.yml    the test splits of the three attribute tasks
```
Voice gender is the espeak-ng variant's (`+fN` female, `+mN` or none male); the rate bucket splits the
corpus's rate range in thirds (`RATE_BUCKETS`). Rows keep the corpus's utterance order, so row i of
every attribute file is the same audio as row i of `MUSTC/en-de/<split>.parquet` (and a frozen-encoder
feature cache filled by one task serves the others). Questions are drawn per row (seeded) from a few
phrasings. `OUT` defaults to the corpus directory; files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from llava.dataset.importers import write_parquet
from llava.dataset.seeding import stable_rng
from llava.demo.corpus.build import RATE_RANGE, SPLITS, Job, plan_corpus
from llava.demo.corpus.configs import ASR_DURATION, LANG_PAIR, SQA_DURATION
from llava.demo.corpus.files import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["RATE_BUCKETS", "build_attributes", "rate_bucket", "voice_gender"]


def _thirds(lo: int, hi: int) -> tuple[tuple[int, int, str], ...]:
    step = (hi - lo + 1) / 3
    edges = [lo, round(lo + step), round(lo + 2 * step), hi + 1]
    return tuple((edges[i], edges[i + 1], name) for i, name in enumerate(("slow", "medium", "fast")))


# (first wpm, last wpm + 1, label): the corpus's rate range in thirds (130-148, 149-166, 167-185).
RATE_BUCKETS = _thirds(*RATE_RANGE)
QUESTIONS = {
    "gender": (
        "What is the gender of the speaker?",
        "Is the speaker male or female?",
        "Is this a male or a female voice?",
    ),
    "rate": (
        "How fast does the speaker talk: slow, medium or fast?",
        "Is the speech slow, medium or fast?",
        "What is the speaking rate: slow, medium or fast?",
    ),
    "wpm": (
        "How many words per minute does the speaker say?",
        "What is the speaking rate in words per minute?",
    ),
}


def voice_gender(voice: str) -> str:
    """female for an espeak-ng `+fN` variant, male otherwise (`+mN`, or the default voice)."""
    variant = voice.partition("+")[2]
    return "female" if variant.startswith("f") else "male"


def rate_bucket(rate: int) -> str:
    """slow | medium | fast for a rate in words per minute (`RATE_BUCKETS`)."""
    for lo, hi, name in RATE_BUCKETS:
        if lo <= rate < hi:
            return name
    raise ValueError(f"rate {rate} wpm lies outside the corpus's range {RATE_RANGE}")


def _question(task: str, seed: int, key: str) -> str:
    options = QUESTIONS[task]
    return options[int(stable_rng(seed, "attribute-question", task, key).integers(len(options)))]


def _read_manifest(corpus: Path) -> dict[str, Any]:
    path = corpus / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not found; build the corpus first (python -m llava.demo.corpus)"
        ) from None
    for field in ("size", "seed"):
        if field not in manifest:
            raise ValueError(f"{path}: no {field!r}; rebuild the corpus (python -m llava.demo.corpus)")
    return manifest


def _rows(corpus: Path, split: str, jobs: dict[str, Job], seed: int) -> tuple[list[dict], list[dict]]:
    path = corpus / "MUSTC" / LANG_PAIR / f"{split}.parquet"
    table = pq.read_table(path, columns=["audio", "sentence", "duration"]).to_pylist()
    gender, rate = [], []
    for i, row in enumerate(table):
        key = row["audio"]["path"]
        job = jobs.get(key)
        if job is None or job.text != row["sentence"]:
            raise ValueError(
                f"{path}: row {i} ({key}) is not the utterance the corpus plan has for it; was the corpus "
                "built by another version of llava.demo.corpus? Rebuild it with --force"
            )
        common = {"audio": row["audio"], "duration": row["duration"]}
        gender.append(
            {
                **common,
                "question": _question("gender", seed, key),
                "label": voice_gender(job.voice),
                "voice": job.voice,
            }
        )
        rate.append(
            {
                **common,
                "question": _question("rate", seed, key),
                "label": rate_bucket(job.rate),
                "rate_question": _question("wpm", seed, key),
                "value": float(job.rate),
                "rate": job.rate,
            }
        )
    return gender, rate


def _entry(
    dtype: str, root: Path, task: str, language: str, parts: list[tuple], columns: dict | None = None
) -> dict:
    """One DATA item; parts are (stem, destination, eval-set name or None, (min, max) seconds)."""
    body: dict[str, Any] = {"datapath": str(root), "task": task, "languages": [language]}
    if columns:
        body["columns"] = columns
    body["partitions"] = {}
    for stem, dest, name, (lo, hi) in parts:
        body["partitions"][stem] = {"min_duration": lo, "max_duration": hi, "destination": dest}
        if name:
            body["partitions"][stem]["name"] = name
    return {dtype: body}


def _configs(out: Path, corpus: Path) -> list[Path]:
    attr = (out / "ATTRIBUTES").resolve()
    mustc, sqa = (corpus / "MUSTC").resolve(), (corpus / "SpokenSQuAD").resolve()
    a, q = ASR_DURATION, SQA_DURATION
    wpm = {"question": "rate_question"}  # the REG rows ask for the number, not the bucket
    cls = [
        _entry(
            "Parquet",
            attr,
            "CLS",
            "en",
            [("gender_train", "train", None, a), ("gender_dev", "eval", "gender", a)],
        ),
        _entry(
            "Parquet", attr, "CLS", "en", [("rate_train", "train", None, a), ("rate_dev", "eval", "rate", a)]
        ),
    ]
    others = [
        _entry(
            "Parquet",
            attr,
            "REG",
            "en",
            [("rate_train", "train", None, a), ("rate_dev", "eval", "rate_wpm", a)],
            wpm,
        ),
        _entry("MuSTC", mustc, "ASR", LANG_PAIR, [("train", "train", None, a), ("dev", "eval", "asr", a)]),
        _entry("MuSTC", mustc, "ST", LANG_PAIR, [("train", "train", None, a), ("dev", "eval", "st", a)]),
        _entry("Spoken_SQuAD", sqa, "SQA", "en", [("train", "train", None, q), ("dev", "eval", "sqa", q)]),
    ]
    test = [
        _entry("Parquet", attr, "CLS", "en", [("gender_test", "test", None, a)]),
        _entry("Parquet", attr, "CLS", "en", [("rate_test", "test", None, a)]),
        _entry("Parquet", attr, "REG", "en", [("rate_test", "test", None, a)], wpm),
    ]
    configs = {
        "attributes_cls.yml": (
            "Curriculum stages 1-2: speaker-attribute classification (gender, rate bucket)",
            cls,
        ),
        "attributes_all.yml": (
            "Curriculum stage 3: every task (attributes, rate in wpm, ASR, ST, SQA)",
            cls + others,
        ),
        "eval_attributes.yml": (
            "Speaker-attribute test sets (CLS gender, CLS rate bucket, REG rate in wpm)",
            test,
        ),
    }
    paths = []
    for name, (title, data) in configs.items():
        text = f"# {title}\n# Written by `python -m llava.demo.corpus.attributes`; paths are absolute.\n"
        text += yaml.safe_dump({"DATA": data}, sort_keys=False)
        path = out / "configs" / name
        atomic_write_bytes(path, text.encode())
        paths.append(path)
    return paths


def build_attributes(corpus: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write the attribute parquet files and data configs for a built corpus; returns a summary."""
    corpus = Path(corpus)
    out = Path(out) if out is not None else corpus
    manifest = _read_manifest(corpus)
    plan = plan_corpus(manifest["size"], manifest["seed"])
    jobs = {job.key: job for job in plan.jobs if job.kind == "mustc"}
    counts: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        gender, rate = _rows(corpus, split, jobs, manifest["seed"])
        write_parquet(gender, out / "ATTRIBUTES" / f"gender_{split}.parquet")
        write_parquet(rate, out / "ATTRIBUTES" / f"rate_{split}.parquet")
        counts[split] = {
            "rows": len(gender),
            "gender": {g: sum(r["label"] == g for r in gender) for g in ("female", "male")},
            "rate": {name: sum(r["label"] == name for r in rate) for _, _, name in RATE_BUCKETS},
        }
    configs = _configs(out, corpus)
    summary = {"corpus": str(corpus.resolve()), "counts": counts, "configs": [str(p) for p in configs]}
    logger.info("speaker attributes written to %s: %s", out / "ATTRIBUTES", counts)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llava.demo.corpus.attributes",
        description="Speaker-attribute tasks (voice gender, speaking rate) from a built synthetic corpus.",
    )
    parser.add_argument("--corpus", required=True, help="a corpus built by python -m llava.demo.corpus")
    parser.add_argument("--out", default=None, help="where ATTRIBUTES/ and configs/ go (default: the corpus)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = build_attributes(args.corpus, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
