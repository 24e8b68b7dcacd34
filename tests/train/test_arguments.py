"""Training arguments: defaults, the Trainer's conventions, the original flag names."""

from __future__ import annotations

from transformers import HfArgumentParser
from transformers.trainer_utils import SaveStrategy

from llava.train.arguments import TrainingArguments


def _training(*argv: str) -> TrainingArguments:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", "o", *argv])
    return args


def test_checkpointing_defaults_are_the_paper_scripts():
    args = _training()
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == (SaveStrategy.STEPS, 1000, 10)


def test_save_steps_alone_saves_every_n_steps():
    args = _training("--save_steps", "7")
    assert args.save_strategy == SaveStrategy.STEPS and args.save_steps == 7
    assert _training("--save_strategy", "epoch").save_strategy == SaveStrategy.EPOCH
