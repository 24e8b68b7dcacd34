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


def test_dataloader_defaults_are_sized_from_the_machine(monkeypatch):
    from llava.train.arguments import default_dataloader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_dataloader_workers() == 3  # 16 CPUs / 4 processes, one left for the loop
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_dataloader_workers() == 8  # capped
    args = _training()
    assert args.dataloader_num_workers == 8
    assert args.dataloader_prefetch_factor == 2 and args.dataloader_persistent_workers is True
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_dataloader_workers() == 0


def test_no_workers_means_no_prefetch_or_persistence():
    args = _training("--dataloader_num_workers", "0", "--dataloader_persistent_workers", "True")
    assert (args.dataloader_num_workers, args.dataloader_prefetch_factor, args.dataloader_persistent_workers) == (0, None, False)  # fmt: skip
    args = _training("--dataloader_num_workers", "2", "--dataloader_prefetch_factor", "6", "--dataloader_persistent_workers", "False")  # fmt: skip
    assert (args.dataloader_prefetch_factor, args.dataloader_persistent_workers) == (6, False)


def test_nested_settings_and_their_flat_views():
    from llava.train.arguments import EncoderLoraArgs, LoraArgs, ModelArguments, QFormerArgs

    args = ModelArguments(qformer=QFormerArgs(num_queries=2), lora=LoraArgs(r=4, bias="all"))
    assert args.mm_qformer_num_query_token == 2 and args.lora_r == 4 and args.lora_encoder is False
    assert args.projector_config() == {
        "num_queries": 2, "num_layers": 4, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072,
        "window_seconds": 0.333, "window_positions": False,
    }  # fmt: skip
    assert ModelArguments(mm_speech_projector_type="mlp", mm_speech_stack=3).projector_config() == {
        "stack": 3
    }
    with_context = ModelArguments(mm_speech_projector_type="mlp", mm_speech_stack=2, mm_speech_context=1)
    assert with_context.projector_config() == {"stack": 2, "context": 1}
    with_dropout = ModelArguments(mm_speech_projector_type="linear", mm_speech_dropout=0.1)
    assert with_dropout.projector_config() == {"stack": 5, "dropout": 0.1}
    enc = EncoderLoraArgs(enable=True, r=2, target_modules="k_proj").resolved(args.lora)
    assert (enc.enable, enc.r, enc.alpha, enc.bias, enc.target_modules) == (True, 2, 16, "all", "k_proj")
