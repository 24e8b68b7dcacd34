"""The ASR pretraining data with its transcripts written letter by letter, for a contrastive stage 1
whose text side is the form in which the shipped LLM reads speech.

The shipped tiny LLM reads speech as spelled letters ("t h e | c a t"; `base_models.chats.spelled`),
not as the word tokens of the transcript. A contrastive loss that pulls pooled speech towards pooled
word embeddings then aims at a target the LLM never reads; with the transcript spelled, the text side
is what the projector's outputs have to become. A large LLM reads words, so the paper's variants keep
the word transcript; this one is an exploratory variant of the study (`contr-cos-emb-spelled`).

Derived from a built corpus (same audio, same rows), written once beside it, atomically:
    CORPUS/MUSTC_spelled/en-de/{train,dev}.parquet
    CORPUS/configs/pretrain_asr_spelled.yml
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llava.demo.base_models.chats import TaskText, spelled
from llava.demo.corpus.configs import ASR_DURATION, LANG_PAIR, _config_text
from llava.demo.corpus.files import atomic_write_bytes

CONFIG_NAME = "pretrain_asr_spelled.yml"
SPLITS = (("train", "train"), ("dev", "eval"))


def spell(sentence: str) -> str:
    """`sentence` letter by letter with `|` between words, no letter doubled (digits, punctuation dropped)."""
    # repeat_p=0 never draws a doubling, so the generator's state does not matter.
    return spelled(TaskText("ASR", sentence, ""), np.random.default_rng(0), repeat_p=0.0).content


def _spelled_table(src: Path) -> pa.Table:
    table = pq.read_table(src)
    if "sentence" not in table.schema.names:
        raise ValueError(f"{src}: no 'sentence' column (columns: {table.schema.names})")
    column = [spell(s) for s in table["sentence"].to_pylist()]
    empty = [i for i, s in enumerate(column) if not s]
    if empty:
        raise ValueError(f"{src}: field 'sentence' of row {empty[0]} has no letters to spell")
    return table.set_column(table.schema.get_field_index("sentence"), "sentence", pa.array(column))


def write_spelled_asr(corpus: Path) -> Path:
    """The spelled copy of `corpus`'s ASR train/dev data and its data config; returns the config path.

    Idempotent: files already written are kept (two worker processes may ask at once; both would
    write the same bytes, and each file is replaced atomically)."""
    corpus = corpus.resolve()
    config = corpus / "configs" / CONFIG_NAME
    root = corpus / "MUSTC_spelled"
    for stem, _ in SPLITS:
        dst = root / LANG_PAIR / f"{stem}.parquet"
        if dst.is_file():
            continue
        src = corpus / "MUSTC" / LANG_PAIR / f"{stem}.parquet"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found (build the corpus with python -m llava.demo.corpus)")
        sink = pa.BufferOutputStream()
        pq.write_table(_spelled_table(src), sink, row_group_size=256)
        atomic_write_bytes(dst, sink.getvalue().to_pybytes())
    if not config.is_file():
        text = _config_text(
            "ASR pretraining, transcripts spelled letter by letter (the contrastive text side)",
            [("MuSTC", str(root), "ASR", list(SPLITS))],
            {"MuSTC": ASR_DURATION},
        )
        atomic_write_bytes(config, text.encode())
    return config
