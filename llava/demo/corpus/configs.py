"""The YAML data configs written next to the corpus (the DESIGN format, absolute paths)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from llava.demo.corpus.files import atomic_write_bytes

SRC_LANG, TGT_LANG = "en", "de"
LANG_PAIR = f"{SRC_LANG}-{TGT_LANG}"

# Duration bounds written into the data configs (seconds); every synthesised utterance fits.
ASR_DURATION = (0.3, 30.0)
SQA_DURATION = (1.0, 60.0)


def _config_text(title: str, blocks: Iterable[tuple[str, str, str, list[tuple[str, str]]]], duration) -> str:
    """A YAML data config in the DESIGN format; blocks are (dataset type, datapath, task, [(stem, destination)])."""
    lines = [f"# {title}", "# Written by `python -m llava.demo.corpus`; paths are absolute.", "DATA:"]
    for dtype, datapath, task, parts in blocks:
        lines += [f"  - {dtype}:", f"      datapath: {json.dumps(datapath)}", f"      task: {task}"]
        lines.append(f"      languages: [{LANG_PAIR if dtype != 'Spoken_SQuAD' else SRC_LANG}]")
        lines.append("      partitions:")
        for stem, dest in parts:
            lo, hi = duration[dtype]
            lines += [
                f"        {stem}:",
                '          amount: ":100%"',
                f"          min_duration: {lo}",
                f"          max_duration: {hi}",
                f"          destination: {dest}",
            ]
    return "\n".join(lines) + "\n"


def write_configs(out: Path) -> list[Path]:
    """The data configs of the embedded default, pointing at this corpus by absolute path."""
    root = out.resolve()
    mustc, nwp, sqa = str(root / "MUSTC"), str(root / "NWP"), str(root / "SpokenSQuAD")
    train_dev = [("train", "train"), ("dev", "eval")]
    test = [("test", "test")]
    duration = {"MuSTC": ASR_DURATION, "MuSTC_NWP": ASR_DURATION, "Spoken_SQuAD": SQA_DURATION}
    configs = {
        "pretrain_asr.yml": ("ASR pretraining on the synthetic corpus", [("MuSTC", mustc, "ASR", train_dev)]),
        "pretrain_mixed.yml": (
            "Mixed speech-text NWP pretraining (word boundaries from espeak-ng)",
            [("MuSTC_NWP", nwp, "ASR", train_dev)],
        ),
        "finetune_mixed.yml": (
            "Fine-tuning on ASR + ST (en-de) + SQA",
            [
                ("MuSTC", mustc, "ASR", train_dev),
                ("MuSTC", mustc, "ST", train_dev),
                ("Spoken_SQuAD", sqa, "SQA", train_dev),
            ],
        ),
        "eval_asr.yml": ("ASR test set", [("MuSTC", mustc, "ASR", test)]),
        "eval_st.yml": ("ST (en-de) test set", [("MuSTC", mustc, "ST", test)]),
        "eval_sqa.yml": ("SQA test set", [("Spoken_SQuAD", sqa, "SQA", test)]),
    }
    paths = []
    for name, (title, blocks) in configs.items():
        path = out / "configs" / name
        atomic_write_bytes(path, _config_text(title, blocks, duration).encode())
        paths.append(path)
    return paths
