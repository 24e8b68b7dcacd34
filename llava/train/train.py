"""Training entry point for both stages.

    python -m llava.train.train [settings.yml] --model_name_or_path LLM --audio_encoder ENC \
        --data_config_path data.yml --output_dir out [--contrastive_training True ...]

(a settings file and flags together, the flags winning: see `llava.train.parsing`)

Reads top to bottom: arguments -> data config (validated before anything heavy) -> model (frozen
parts, trainable projector / LoRA) -> objective (validated against the LLM depth) -> datasets and
collator -> Trainer -> train -> save trainable weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import torch
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from llava.dataset.collator import SpeechCollator
from llava.dataset.config import load_data_config
from llava.dataset.dataset import SpeechDataset
from llava.dataset.interleave import InterleaveOptions
from llava.dataset.prompts import PromptSettings, resolve_prompt_settings
from llava.losses.distributed import data_parallel_world
from llava.model.builder import (
    LoraSettings,
    apply_training_mode,
    build_model,
    count_parameters,
    dtype_by_name,
    load_projector,
)
from llava.model.checkpoint import read_config
from llava.model.compile import compile_llm
from llava.model.feature_cache import attach_feature_cache
from llava.model.stage_init import init_from_checkpoint
from llava.model.text_cache import attach_text_cache
from llava.train.arguments import DataArguments, LossArguments, ModelArguments, TrainingArguments
from llava.train.eval_sets import check_best_model_metric, eval_set_names, split_eval_sets
from llava.train.objectives import ObjectiveSet, build_objective
from llava.train.parsing import parse_training_args
from llava.train.throughput import attach_throughput
from llava.train.trainer import SpeechTrainer

logger = logging.getLogger("llava.train")


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, LossArguments, TrainingArguments]:
    """`[CONFIG.yml] [--flag value ...]`: a settings file and command-line flags together, the flags
    winning (see `llava.train.parsing`)."""
    return parse_training_args(argv)


def frozen_dtype(model_args: ModelArguments, training_args: TrainingArguments) -> torch.dtype | None:
    """Storage dtype of the frozen encoder and LLM (the trainable projector stays fp32)."""
    if model_args.frozen_dtype != "auto":
        return dtype_by_name(model_args.frozen_dtype, "--frozen_dtype")
    if training_args.bf16 and torch.cuda.is_available():
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return None  # fp32 (CPU autocast still runs matmuls in bf16 with --bf16)


def lora_settings(model_args: ModelArguments, component: str = "llm") -> LoraSettings:
    """LoRA settings of the LLM ("llm": the --lora_* flags) or the encoder ("encoder": the
    --encoder_lora_* flags, each unset one taking the LLM's value)."""
    if component == "llm":
        args, prefix = model_args.lora, "--lora_"
    elif component == "encoder":
        args, prefix = model_args.encoder_lora.resolved(model_args.lora), "--encoder_lora_"
    else:
        raise ValueError(f"unknown LoRA component {component!r}: expected llm or encoder")
    values = {k: v for k, v in dataclasses.asdict(args).items() if k != "enable"}
    try:
        return LoraSettings(**values)
    except ValueError as e:
        raise ValueError(f"{prefix}*: {e}") from None


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from, with the Trainer's conventions for `--resume_from_checkpoint`:
    a path, or True for the newest `checkpoint-N` in `--output_dir` (False / unset: start afresh)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "no", "0"):
        return None
    if str(value).strip().lower() not in ("true", "yes", "1"):
        if not os.path.isdir(value):
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
        return str(value)
    newest = (
        get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    )
    if newest is None:
        raise FileNotFoundError(
            f"--resume_from_checkpoint True: no checkpoint-N directory in --output_dir {training_args.output_dir}"
        )
    return newest


def check_word_boundaries(data_config) -> None:
    """Mixed speech-text NWP cuts audio at word boundaries: every training file must have them."""
    import pyarrow.parquet as pq

    for spec in data_config.for_destination("train"):
        column = spec.columns.get("word_boundaries", "word_boundaries")
        if column not in pq.read_schema(spec.path).names:
            raise ValueError(
                f"--audio_nwp needs word_boundaries, but {spec.path} has no column {column!r}; add one with "
                "`python -m llava.dataset.alignment` (CTC forced alignment)"
            )


def prompt_settings(data_args: DataArguments, data_config) -> PromptSettings:
    """The run's prompt layout, system turn and instruction sampling (ValueError naming the flag)."""
    return resolve_prompt_settings(
        data_args.prompt_format,
        data_args.system_prompt,
        data_args.instruction_sampling,
        config_format=data_config.prompt_format,
    )


def build_datasets(
    data_args: DataArguments, training_args: TrainingArguments, data_config, sampling_rate: int
):
    interleave = InterleaveOptions(seed=training_args.seed) if data_args.audio_nwp else None
    prompts = prompt_settings(data_args, data_config)
    text_options = dict(
        prompt_format=prompts.prompt_format,
        instruction_sampling=prompts.instruction_sampling,
        no_punctuation=data_args.no_punctuation,
    )
    train_ds = SpeechDataset.from_config(
        data_config,
        "train",
        seed=training_args.seed,
        data_subset=data_args.data_subset if data_args.data_subset < 1.0 else None,
        interleave_options=interleave,
        sampling_rate=sampling_rate,
        strict=data_args.strict_data,
        audio_memo_mb=data_args.audio_memo_mb,
        **text_options,
    )
    eval_ds = None
    if data_config.for_destination("eval"):
        eval_ds = SpeechDataset.from_config(
            data_config,
            "eval",
            seed=training_args.seed,
            interleave_options=interleave,
            sampling_rate=sampling_rate,
            strict=data_args.strict_data,
            **text_options,
        )
        # One set per named eval partition (a dict: eval_<name>_loss), each capped at max_eval_samples.
        eval_ds = split_eval_sets(eval_ds, data_args.max_eval_samples or None)
    return train_ds, eval_ds


def build_collator(
    tokenizer,
    num_audio_tokens: Callable[[int], int],
    objective: ObjectiveSet,
    data_args: DataArguments,
    system_prompt: str | None,
) -> SpeechCollator:
    """The training collator for `objective`: its batch layout (chat, mixed), whether it carries the
    transcript side and in which form ([BOS] + transcript + end token for the mixed contrastive loss)."""
    return SpeechCollator(
        tokenizer,
        num_audio_tokens,
        mode=objective.collator_mode,
        with_transcript=objective.needs_transcript,
        transcript_special_tokens=objective.transcript_special_tokens,
        max_length=data_args.model_max_length,
        system_prompt=system_prompt,
    )


def main(argv: list[str] | None = None) -> SpeechTrainer:
    model_args, data_args, loss_args, training_args = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
    )
    set_seed(training_args.seed)

    # Fail on a malformed data config or a missing checkpoint before loading gigabytes of weights.
    resume = resume_checkpoint(training_args)
    data_config = load_data_config(data_args.data_config_path)
    prompts = prompt_settings(data_args, data_config)  # unknown format, missing system-prompt file
    check_best_model_metric(training_args, eval_set_names(data_config.for_destination("eval")))
    if model_args.init_from:
        if model_args.pretrain_mm_speech_adapter:
            raise ValueError(
                "--init_from and --pretrain_mm_speech_adapter both initialise the projector: give one "
                "(--init_from also carries LoRA adapters over)"
            )
        read_config(model_args.init_from)  # a missing or malformed checkpoint fails here
    if data_args.audio_nwp:
        check_word_boundaries(data_config)
    if loss_args.contrastive_training and not loss_args.contrastive_gather:
        if data_args.batch_max_seconds <= 0 and training_args.per_device_train_batch_size < 2:
            raise ValueError(
                "the contrastive loss needs at least 2 utterances per batch (no negatives otherwise)"
            )

    model, tokenizer = build_model(
        model_args.audio_encoder,
        model_args.model_name_or_path,
        projector_type=model_args.mm_speech_projector_type,
        projector_config=model_args.projector_config(),
        encoder_layer=model_args.mm_speech_select_layer,
        attn_implementation=model_args.attn_implementation,
        llm_dtype=frozen_dtype(model_args, training_args),
        encoder_dtype=frozen_dtype(model_args, training_args),
    )
    objective = build_objective(loss_args, data_args, model.num_llm_layers)
    if model_args.pretrain_mm_speech_adapter:
        missing = load_projector(
            model,
            model_args.pretrain_mm_speech_adapter,
            allow_partial=model_args.allow_partial_projector_init,
        )
        logger.info(
            "projector initialised from %s%s",
            model_args.pretrain_mm_speech_adapter,
            f" except {len(missing)} tensors left random" if missing else "",
        )
    apply_training_mode(
        model,
        freeze_encoder=model_args.freeze_audio_encoder,
        freeze_projector=not model_args.tune_mm_mlp_adapter,
        freeze_llm=model_args.freeze_backbone,
        lora_llm=lora_settings(model_args, "llm") if model_args.lora.enable else None,
        lora_encoder=lora_settings(model_args, "encoder") if model_args.encoder_lora.enable else None,
        freeze=model_args.freeze_modules.split(","),
        flags={
            "lora_llm": "--lora_target_modules",
            "lora_encoder": "--encoder_lora_target_modules"
            + (" (unset: --lora_target_modules)" if model_args.encoder_lora.target_modules is None else ""),
            "freeze": "--freeze_modules",
        },
    )
    if model_args.init_from:  # after LoRA exists, so the previous stage's adapters have a place to go
        init_from_checkpoint(model, model_args.init_from)
    counts = count_parameters(model)
    logger.info(
        "parameters: %.2fM trainable, %.2fM frozen", counts["trainable"] / 1e6, counts["frozen"] / 1e6
    )
    # After freezing and dtype are final: the cache key covers both (a training encoder bypasses it).
    attach_feature_cache(
        model.audio_tower, model_args.audio_feature_cache, model_args.audio_feature_cache_dtype
    )
    attach_text_cache(model, model_args.text_state_cache, objective)
    model.reuse_shared_prefix = model_args.reuse_shared_prefix
    if model_args.torch_compile_llm:
        compile_llm(
            model, training_args.torch_compile_backend or "inductor", training_args.torch_compile_mode
        )

    train_ds, eval_ds = build_datasets(data_args, training_args, data_config, model.audio_tower.sampling_rate)
    # Rows left out at load; the rows dropped while training come from the trainer, once per row id
    # (with loader workers the dataset's own counter never sees them).
    load_skips = train_ds.skips.copy()
    collator = build_collator(tokenizer, model.num_audio_tokens, objective, data_args, prompts.system_prompt)
    trainer = SpeechTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        objective=objective,
        max_nonfinite_steps=loss_args.max_nonfinite_steps,
        batch_max_seconds=data_args.batch_max_seconds,
        log_term_grad_norms=loss_args.log_term_grad_norms,
    )
    if training_args.log_throughput:
        attach_throughput(trainer, model.audio_tower.sampling_rate, training_args.mfu_peak_tflops)
    world, rank = data_parallel_world()
    logger.info("data-parallel processes: %d (this is rank %d)", world, rank)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    skips = trainer.skip_summary(load_skips)  # gathers over data-parallel ranks: call on every rank
    if data_parallel_world()[1] == 0:
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
        (logger.warning if skips else logger.info)("training data: %s", skips.summary())
        logger.info("trainable weights saved to %s", training_args.output_dir)
        for cache in (model.audio_tower.feature_cache, model.text_cache):
            if cache is not None:
                logger.info("%s", cache.summary())
    return trainer


def run(argv: list[str] | None = None) -> None:
    """Script entry: train, then leave the process group in order.

    A rank that exits with its gloo/NCCL group still alive can abort in the C++ destructor of the
    group's worker threads ("terminate called without an active exception"), failing a run that
    trained and saved; a final barrier and an explicit teardown avoid that.
    """
    main(argv)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run()
