"""Build the synthetic spoken corpus: parquet files in the layouts the data loader reads, a text
corpus for the tiny LLM, YAML data configs and a manifest.

```
DIR/MUSTC/en-de/{train,dev,test}.parquet                 audio, sentence, translation, duration
DIR/NWP/en-de_{train,dev,test}_processed.parquet         audio, transcription, word_boundaries, ...
DIR/SpokenSQuAD/spoken_squad_{train,dev,test}.parquet    audio, question, answer, duration, context
DIR/text/lm_corpus.txt                                   one sentence / passage / question / answer per line
DIR/text/lm_tasks.jsonl                                  the same training texts, structured (pairs, passages + QAs)
DIR/configs/*.yml                                        data configs (absolute paths)
DIR/manifest.json                                        counts, hours, seed, size, files
```
Everything is a function of (size, seed): the same arguments give byte-identical parquet files,
whatever the number of worker processes. Dev and test sentences and passages never occur in the
training split nor in the LM text corpus.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from llava.dataset.audio import encode_audio
from llava.demo.corpus.configs import LANG_PAIR, SRC_LANG, TGT_LANG, write_configs
from llava.demo.corpus.files import (
    MUSTC_SCHEMA,
    NWP_SCHEMA,
    SQA_SCHEMA,
    StreamingParquet,
    atomic_write_bytes,
)
from llava.demo.corpus.grammar import Sentence, generate_sentences
from llava.demo.corpus.passages import Passage, generate_passages
from llava.demo.corpus.speech import SAMPLING_RATE, speak

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: text/lm_tasks.jsonl
SPLITS = ("train", "dev", "test")

# espeak-ng voices: language variants x voice variants (male/female timbres).
VOICES = (
    "en-us",
    "en-us+f2",
    "en-us+m3",
    "en+f3",
    "en+m1",
    "en-gb-x-rp+m2",
    "en-gb-x-rp+f4",
    "en-029+f1",
    "en-us-nyc+m5",
    "en-gb-scotland+f5",
)
RATE_RANGE = (130, 185)  # words per minute
PITCH_RANGE = (35, 65)


@dataclass(frozen=True)
class CorpusSize:
    """How much of everything one `--size` builds."""

    asr: tuple[int, int, int]  # utterances (train, dev, test), shared by MUSTC and NWP
    sqa: tuple[int, int, int]  # spoken passages (train, dev, test)
    questions_per_passage: int  # SQA rows per passage (each a different question)
    lm_extra_sentences: int  # text-only sentence pairs added to the LM corpus
    lm_extra_passages: int  # text-only passages (with all their questions) added to the LM corpus


SIZES: dict[str, CorpusSize] = {
    "tiny": CorpusSize(
        asr=(60, 16, 16),
        sqa=(12, 4, 4),
        questions_per_passage=2,
        lm_extra_sentences=300,
        lm_extra_passages=40,
    ),
    "small": CorpusSize(
        asr=(2000, 200, 200),
        sqa=(300, 40, 40),
        questions_per_passage=2,
        lm_extra_sentences=6000,
        lm_extra_passages=900,
    ),
    "medium": CorpusSize(
        asr=(10000, 500, 500),
        sqa=(1500, 100, 100),
        questions_per_passage=2,
        lm_extra_sentences=30000,
        lm_extra_passages=4500,
    ),
}


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise."""

    key: str  # unique within the corpus; also the audio `path` label
    split: str  # train | dev | test
    kind: str  # "mustc" (a sentence) | "sqa" (a passage)
    index: int  # row of the sentence / passage within its split
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int


@dataclass
class Rendered:
    """A synthesised job, ready to be written."""

    job: Job
    flac: bytes  # 16 kHz mono FLAC
    duration: float  # seconds
    word_boundaries: list[list]  # [[start_s, end_s, word], ...]
    merged_words: int  # words timed from phoneme events (espeak-ng spoke them inside a neighbour)


def _render(job: Job) -> Rendered:
    spoken = speak(job.text, voice=job.voice, rate=job.rate, pitch=job.pitch, seed=job.seed)
    audio = encode_audio(spoken.audio, spoken.sampling_rate, fmt="flac")
    return Rendered(
        job=job,
        flac=audio["bytes"],
        duration=spoken.duration,
        word_boundaries=spoken.word_boundaries,
        merged_words=spoken.merged_words,
    )


def _render_all(jobs: list[Job], workers: int) -> Iterator[Rendered]:
    """Synthesise in order; each call is a pure function of its job, so the pool size changes nothing."""
    if workers <= 1 or len(jobs) < 50:
        for job in jobs:
            yield _render(job)
        return
    # Each worker process loads its own copy of espeak-ng (the library is not thread-safe).
    with multiprocessing.get_context().Pool(processes=workers) as pool:
        yield from pool.imap(_render, jobs, chunksize=16)


@dataclass
class CorpusPlan:
    """All texts and synthesis jobs of a corpus, before any audio exists."""

    sentences: dict[str, list[Sentence]]  # split -> sentence pairs
    passages: dict[str, list[Passage]]  # split -> passages
    questions: dict[str, list[list[int]]]  # split -> per passage, indices of the QAs used as rows
    lm_sentences: list[Sentence]  # text-only extras
    lm_passages: list[Passage]
    jobs: list[Job]


def plan_corpus(size: str, seed: int) -> CorpusPlan:
    """Draw every text and voice setting of the corpus (fast, no synthesis)."""
    spec = SIZES[size]
    # String seeds are hashed (SHA-512) by `random`, stable across Python versions and platforms.
    rng_text = random.Random(f"speech-llava/synth/{seed}/sentences")
    rng_pass = random.Random(f"speech-llava/synth/{seed}/passages")
    rng_voice = random.Random(f"speech-llava/synth/{seed}/voices")

    # Held-out splits are drawn first, so the training texts (and the LM corpus) exclude them.
    sentences: dict[str, list[Sentence]] = {}
    seen: set[str] = set()
    for split in ("test", "dev", "train"):
        n = spec.asr[SPLITS.index(split)]
        sentences[split] = generate_sentences(rng_text, n, exclude=seen)
        seen.update(s.en for s in sentences[split])
    lm_sentences = generate_sentences(rng_text, spec.lm_extra_sentences, exclude=seen)

    passages: dict[str, list[Passage]] = {}
    seen_p: set[str] = set()
    for split in ("test", "dev", "train"):
        n = spec.sqa[SPLITS.index(split)]
        passages[split] = generate_passages(rng_pass, n, exclude=seen_p)
        seen_p.update(p.context for p in passages[split])
    lm_passages = generate_passages(rng_pass, spec.lm_extra_passages, exclude=seen_p)
    questions = {
        split: [
            sorted(rng_pass.sample(range(len(p.qas)), min(spec.questions_per_passage, len(p.qas))))
            for p in passages[split]
        ]
        for split in SPLITS
    }

    def job(split: str, kind: str, index: int, text: str) -> Job:
        return Job(
            key=f"{kind}_{split}_{index:06d}.flac",
            split=split,
            kind=kind,
            index=index,
            text=text,
            voice=rng_voice.choice(VOICES),
            rate=rng_voice.randint(*RATE_RANGE),
            pitch=rng_voice.randint(*PITCH_RANGE),
            seed=rng_voice.getrandbits(31),
        )

    jobs = []
    for split in SPLITS:
        jobs += [job(split, "mustc", i, s.en) for i, s in enumerate(sentences[split])]
        jobs += [job(split, "sqa", i, p.context) for i, p in enumerate(passages[split])]
    return CorpusPlan(sentences, passages, questions, lm_sentences, lm_passages, jobs)


def _audio(r: Rendered) -> dict:
    return {"bytes": r.flac, "path": r.job.key}


def _lm_lines(plan: CorpusPlan) -> list[str]:
    lines: list[str] = []
    for s in plan.sentences["train"] + plan.lm_sentences:
        lines += [s.en, s.de]
    for p in plan.passages["train"] + plan.lm_passages:
        lines.append(p.context)
        for qa in p.qas:
            lines += [qa.question, qa.answer]
    return lines


def _lm_tasks(plan: CorpusPlan) -> list[dict]:
    """The LM corpus texts with their structure kept: sentence pairs and passages with every QA.

    The tiny LLM learns the text versions of the tasks (transcribe, translate, answer) from these.
    """
    records: list[dict] = [
        {"kind": "pair", "en": s.en, "de": s.de} for s in plan.sentences["train"] + plan.lm_sentences
    ]
    for p in plan.passages["train"] + plan.lm_passages:
        records.append(
            {"kind": "passage", "context": p.context, "qas": [[qa.question, qa.answer] for qa in p.qas]}
        )
    return records


# ----------------------------------------------------------------------------- entry point
def built_corpus(out: Path, size: str, seed: int) -> dict | None:
    """The manifest of a finished corpus of this size and seed in `out` (every file it lists present at
    its recorded size), else None."""
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (manifest.get("format"), manifest.get("size"), manifest.get("seed")) != (FORMAT_VERSION, size, seed):
        return None
    for rel, nbytes in manifest.get("files", {}).items():
        f = out / rel
        if not f.is_file() or f.stat().st_size != nbytes:
            return None
    return manifest


def build_corpus(
    out: str | os.PathLike,
    size: str = "small",
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
) -> dict:
    """Build (or find already built) the synthetic corpus in `out`; returns the manifest.

    A finished corpus of the same size and seed is left as is (unless `force`). `workers` processes
    synthesise in parallel (default: all cores); the output does not depend on it.
    """
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; known: {sorted(SIZES)}")
    out = Path(out)
    if not force and (manifest := built_corpus(out, size, seed)) is not None:
        logger.info("corpus in %s is already built (size=%s, seed=%d)", out, size, seed)
        return manifest
    from llava.demo.corpus.espeak import get_espeak

    # Fail early, with the install hint, when espeak-ng is missing.
    if not get_espeak().output_is_history_free():
        logger.warning(
            "espeak-ng output depends on earlier calls here: the corpus will not be byte-reproducible"
        )
    t0 = time.time()
    (out / "manifest.json").unlink(missing_ok=True)  # a half-rebuilt corpus must not look finished
    plan = plan_corpus(size, seed)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    logger.info("synthesising %d utterances with %d worker(s)", len(plan.jobs), workers)

    writers: dict[tuple[str, str], StreamingParquet] = {}
    for split in SPLITS:
        writers["mustc", split] = StreamingParquet(
            out / "MUSTC" / LANG_PAIR / f"{split}.parquet", MUSTC_SCHEMA
        )
        writers["nwp", split] = StreamingParquet(
            out / "NWP" / f"{LANG_PAIR}_{split}_processed.parquet", NWP_SCHEMA
        )
        writers["sqa", split] = StreamingParquet(
            out / "SpokenSQuAD" / f"spoken_squad_{split}.parquet", SQA_SCHEMA
        )
    seconds: dict[tuple[str, str], float] = {key: 0.0 for key in writers}
    merged = 0
    try:
        for r in _render_all(plan.jobs, workers):
            split, i = r.job.split, r.job.index
            seconds[r.job.kind, split] += r.duration
            if r.job.kind == "mustc":
                s = plan.sentences[split][i]
                merged += r.merged_words
                writers["mustc", split].append(
                    {"audio": _audio(r), "sentence": s.en, "translation": s.de, "duration": r.duration}
                )
                writers["nwp", split].append(
                    {
                        "audio": _audio(r),
                        "transcription": s.en,
                        "word_boundaries": json.dumps(r.word_boundaries, ensure_ascii=False),
                        "source_language": SRC_LANG,
                        "target_language": TGT_LANG,
                        "task": "ASR",
                        "duration": r.duration,
                    }
                )
            else:
                p = plan.passages[split][i]
                for q in plan.questions[split][i]:
                    writers["sqa", split].append(
                        {
                            "audio": _audio(r),
                            "question": p.qas[q].question + "\n<audio>",
                            "answer": p.qas[q].answer,
                            "duration": r.duration,
                            "context": p.context,
                        }
                    )
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    synth_seconds = time.time() - t0
    counts = {
        "MUSTC": {split: writers["mustc", split].rows for split in SPLITS},
        "NWP": {split: writers["nwp", split].rows for split in SPLITS},
        "SpokenSQuAD": {split: writers["sqa", split].rows for split in SPLITS},
        "SpokenSQuAD_passages": {split: len(plan.passages[split]) for split in SPLITS},
    }
    hours = {
        "MUSTC": {split: round(seconds["mustc", split] / 3600, 4) for split in SPLITS},
        "SpokenSQuAD_passages": {split: round(seconds["sqa", split] / 3600, 4) for split in SPLITS},
    }

    lm_lines = _lm_lines(plan)
    atomic_write_bytes(out / "text" / "lm_corpus.txt", ("\n".join(lm_lines) + "\n").encode("utf-8"))
    tasks_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _lm_tasks(plan))
    atomic_write_bytes(out / "text" / "lm_tasks.jsonl", tasks_text.encode("utf-8"))
    config_paths = write_configs(out)

    text_files = [out / "text" / "lm_corpus.txt", out / "text" / "lm_tasks.jsonl"]
    files = sorted([w.path for w in writers.values()] + text_files + config_paths)
    english, german = set(), set()
    for split in SPLITS:
        for s in plan.sentences[split]:
            english.update(s.en.lower().strip(".").split())
            german.update(s.de.lower().strip(".").split())
    manifest = {
        "format": FORMAT_VERSION,
        "size": size,
        "seed": seed,
        "spec": asdict(SIZES[size]),
        "root": str(out.resolve()),
        "sampling_rate": SAMPLING_RATE,
        "audio_format": "flac",
        "voices": list(VOICES),
        "rate_range_wpm": list(RATE_RANGE),
        "pitch_range": list(PITCH_RANGE),
        "counts": counts,
        "hours": hours,
        "lm_corpus_lines": len(lm_lines),
        "vocabulary": {"english_words_spoken": len(english), "german_words": len(german)},
        "merged_word_events": merged,
        "workers": workers,
        "synthesis_seconds": round(synth_seconds, 2),
        "build_seconds": round(time.time() - t0, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {str(p.relative_to(out)): p.stat().st_size for p in files},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(out / "manifest.json", text.encode())
    manifest = json.loads(text)  # the same value a later no-op call reads back
    logger.info("built the %s corpus in %s in %.1f s", size, out, manifest["build_seconds"])
    return manifest
