"""Settings of `llava.train.train`, as typed dataclasses (parsed by `llava.train.parsing`).

Flag names follow the original LLaVA-based speech code where one existed (`--contrastive_training`,
`--mm_speech_projector_type`, `--pretrain_mm_speech_adapter`, ...), so existing scripts carry over.
Everything about the loop itself (optimiser, schedule, precision, DeepSpeed, logging, saving,
resuming) is HF `TrainingArguments`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments as HfTrainingArguments


@dataclass
class QFormerArgs:
    """The window-level Q-Former (`llava.model.projectors.qformer`); flags `--mm_qformer_<name>`."""

    # Learnable queries per window.
    num_queries: int = field(
        default=4, metadata={"flag": "mm_qformer_num_query_token", "aliases": ["--qformer_num_query_token"]}
    )
    # Layers, each with cross-attention.
    num_layers: int = field(
        default=4,
        metadata={"flag": "mm_qformer_num_hidden_layers", "aliases": ["--qformer_num_hidden_layers"]},
    )
    # Width, heads and feed-forward width (paper: 768 / 12 / 3072).
    hidden_size: int = 768
    num_heads: int = field(default=12, metadata={"aliases": ["--qformer_num_attention_heads"]})
    intermediate_size: int = 3072
    # Window length in seconds (0.333 s = 17 frames at 50 Hz).
    window_seconds: float = field(default=0.333, metadata={"aliases": ["--qformer_second_per_window"]})
    # A learned embedding per frame position inside a window, added to the frames the queries read (off:
    # the paper's Q-Former, whose cross-attention sees frame content only).
    window_positions: bool = False


@dataclass
class LoraArgs:
    """LoRA on the LLM (`peft.LoraConfig` settings); flags `--lora_<name>`."""

    # Add LoRA adapters to the LLM.
    enable: bool = False
    # Rank, alpha (update scaled by alpha / r, or alpha / sqrt(r) with rsLoRA), dropout on the LoRA input.
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # Comma-separated module names to adapt ("all-linear" = every linear layer).
    target_modules: str = "q_proj,v_proj"
    # Which biases train too: none | all | lora_only.
    bias: str = "none"
    # Rank-stabilised scaling alpha / sqrt(r).
    use_rslora: bool = False


@dataclass
class EncoderLoraArgs:
    """LoRA on the speech encoder; flags `--encoder_lora_<name>` (and the original `--lora_encoder`).
    Each setting left unset takes the LLM's (`resolved`)."""

    # Add LoRA adapters to the encoder.
    enable: bool = field(
        default=False, metadata={"flag": "lora_encoder", "aliases": ["--encoder_lora_enable"]}
    )
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    target_modules: str | None = None
    bias: str | None = None
    use_rslora: bool | None = None

    def resolved(self, llm: LoraArgs) -> LoraArgs:
        """The encoder's complete settings: its own where set, the LLM's elsewhere."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(llm, **values)


@dataclass
class ModelArguments:
    # LLM: hub id or directory (its tokenizer and chat template come along).
    model_name_or_path: str = field(default="meta-llama/Llama-3.1-8B-Instruct")
    # Speech encoder: hub id or directory of any HuBERT / WavLM / wav2vec2 / Whisper checkpoint.
    audio_encoder: str = field(
        default="facebook/hubert-large-ls960-ft", metadata={"aliases": ["--speech_tower"]}
    )
    # Encoder hidden state fed to the projector (-1 = last layer).
    mm_speech_select_layer: int = -1
    # Projector: qformer (paper default) | mlp | linear.
    mm_speech_projector_type: str = "qformer"
    # Q-Former settings (--mm_qformer_*, or --qformer.<name>).
    qformer: QFormerArgs = field(default_factory=QFormerArgs, metadata={"flag_prefix": "mm_qformer_"})
    # mlp / linear projectors: encoder frames stacked per output position.
    mm_speech_stack: int = 5
    # mlp / linear projectors: stacked positions each output position also sees on either side.
    mm_speech_context: int = 0
    # mlp / linear projectors: dropout on the stacked input features (training only).
    mm_speech_dropout: float = 0.0
    # Projector output scale (beyond the paper, which uses none): rms_match rescales every output to
    # the LLM's mean input-embedding norm; layernorm adds a LayerNorm whose gain starts there.
    projector_output_norm: str = "none"
    # Target output norm for projector_output_norm; 0 = measured from the LLM's embedding table.
    projector_output_norm_target: float = 0.0
    # Initialise the projector from this (stage-1) checkpoint directory.
    pretrain_mm_speech_adapter: str | None = None
    # Start even when that checkpoint lacks some projector tensors (e.g. fewer Q-Former layers);
    # the ones left random are logged by name. Off: a missing tensor is an error listing them.
    allow_partial_projector_init: bool = False
    # Continue a multi-stage curriculum from an earlier stage's checkpoint: its projector, LoRA adapters
    # and whatever else it trained (llava.model.stage_init), with a fresh optimiser and schedule (unlike
    # --resume_from_checkpoint, which resumes an interrupted run of the same stage).
    init_from: str | None = None
    # Train the projector (the usual setting in both stages).
    tune_mm_mlp_adapter: bool = True
    # Keep the LLM frozen (LoRA adapters, if enabled, still train).
    freeze_backbone: bool = True
    # Keep the speech encoder frozen (and in eval mode).
    freeze_audio_encoder: bool = True
    # LoRA on the LLM (--lora_enable, --lora_r, ... or --lora.<name>).
    lora: LoraArgs = field(default_factory=LoraArgs, metadata={"flag_prefix": "lora_"})
    # LoRA on the speech encoder (--lora_encoder, --encoder_lora_r, ...; unset values: the LLM's).
    encoder_lora: EncoderLoraArgs = field(
        default_factory=EncoderLoraArgs, metadata={"flag_prefix": "encoder_lora_"}
    )
    # Comma-separated modules or parameters to freeze on top of the flags above: audio_tower,
    # projector, language_model or a sub-module path (e.g. language_model.model.layers.0).
    freeze_modules: str = ""
    # Attention kernel of LLM and encoder: sdpa (flash kernels on GPUs) | eager | flash_attention_2.
    attn_implementation: str = "sdpa"
    # Storage dtype of the frozen encoder and LLM: auto (bf16 with --bf16, fp16 with --fp16) | float32 | bfloat16 | float16.
    frozen_dtype: str = "auto"
    # Frozen-encoder feature cache directory, shared by both stages and evaluation (see
    # llava.model.feature_cache; fill it ahead with `python -m llava.model.feature_cache`); unset = off.
    audio_feature_cache: str | None = None
    # Storage dtype of cached features: bfloat16 (half the disk) | float32 (bit-equal to an fp32 encoder).
    audio_feature_cache_dtype: str = "bfloat16"
    # Pooled text-state cache of the average contrastive loss (llava.model.text_cache; frozen LLM only);
    # unset = off.
    text_state_cache: str | None = None
    # torch.compile the LLM's decoder layers (llava.model.compile); a GPU speed-up, on a CPU for testing only.
    torch_compile_llm: bool = False
    # Run a frozen LLM on the text every row of a batch starts with (the system turn) once, and reuse its
    # keys and values (llava.model.prefix_cache); same losses up to rounding. Off: every row runs in full.
    reuse_shared_prefix: bool = True

    def projector_config(self) -> dict:
        """Settings of the chosen projector (`llava.model.projectors.projector_settings`)."""
        if self.mm_speech_projector_type == "qformer":
            return {**dataclasses.asdict(self.qformer), **self._output_norm_config()}
        extra = {"context": self.mm_speech_context} if self.mm_speech_context else {}
        if self.mm_speech_dropout:
            extra["dropout"] = self.mm_speech_dropout
        return {"stack": self.mm_speech_stack, **extra, **self._output_norm_config()}

    def _output_norm_config(self) -> dict:
        if self.projector_output_norm == "none":  # the paper's projector: its config stays as it was
            return {}
        return {
            "output_norm": self.projector_output_norm,
            "output_norm_target": self.projector_output_norm_target,
        }


def _flat_views(cls: type) -> type:
    """Read-only attributes under each nested setting's flat flag name (`model_args.lora_r` is
    `model_args.lora.r`), so code written against the flat names keeps working."""
    for outer in dataclasses.fields(cls):
        if not isinstance(outer.default_factory, type) or not dataclasses.is_dataclass(outer.default_factory):
            continue
        for inner in dataclasses.fields(outer.default_factory):
            name = inner.metadata.get("flag", outer.metadata.get("flag_prefix", "") + inner.name)
            if not hasattr(cls, name):
                setattr(
                    cls, name, property(lambda self, o=outer.name, i=inner.name: getattr(getattr(self, o), i))
                )
    return cls


_flat_views(ModelArguments)


@dataclass
class DataArguments:
    # YAML data config (the original repo's format); its train/eval destinations feed training.
    data_config_path: str = field(default="scripts/data_configs/pretrain_asr_mustc_giga.yml")
    # Reproducible fraction of the training data to use (e.g. 0.1 for the 10 % fine-tuning setting).
    data_subset: float = 1.0
    # Mixed speech-text next-word prediction (interleaved spans; needs word_boundaries in the data).
    audio_nwp: bool = False
    # Maximum token length of a training sequence.
    model_max_length: int = 2048
    # Batch by total audio duration (seconds per device batch) instead of a fixed batch size; 0 = off.
    batch_max_seconds: float = 0.0
    # Turn every skipped bad sample into an error.
    strict_data: bool = False
    # Keep decoded training waveforms in memory, up to this many MiB per data source and process
    # (0: off), so a sample seen again in a later epoch is not decoded again. For CPU runs whose
    # steps wait on decoding (the demo); each dataloader worker keeps its own.
    audio_memo_mb: float = 0.0
    # Cap on evaluation samples of each validation set (each named eval partition; 0 = all).
    max_eval_samples: int = 0
    # Prompt layout (llava.dataset.prompts.PROMPT_FORMATS): original (the paper's: fixed system turn,
    # "<audio>\n{instruction}", one fixed instruction per task) | instruction_first ("{instruction}\n<audio>",
    # no system turn, sampled instructions). Unset: the data config's PROMPT_FORMAT, else original.
    prompt_format: str | None = None
    # System turn: its text, a file holding it, or "none"; unset: the prompt format's own.
    system_prompt: str | None = None
    # Instruction per training sample: fixed (the task's first) | random (seeded draw); unset: the format's.
    instruction_sampling: str | None = None
    # Delete punctuation ([^\w\s]) from transcripts, word-boundary words and targets (as the original's
    # mixed-NWP scripts do).
    no_punctuation: bool = False


@dataclass
class LossArguments:
    # Stage-1 contrastive speech/text loss.
    contrastive_training: bool = False
    # average (mean-pooled cosine InfoNCE, paper default) | wasserstein (Sinkhorn divergence).
    contrastive_mode: str = "average"
    # LLM layers compared: 0 (embeddings) | k (negative: from the end, -1 = last) | "0,5,10" | all
    # (see llava.model.layers.resolve_layers).
    contrastive_layer: str = "0"
    # Add next-word prediction on the transcript to the contrastive loss.
    contr_asr_combine_loss: bool = False
    # Shift the position ids of both passes by one random offset in [0, max_position_shift).
    position_shift: bool = False
    max_position_shift: int = 400
    # InfoNCE temperature.
    contrastive_temperature: float = 0.1
    # Beyond the paper (off by default): both retrieval directions.
    contrastive_symmetric: bool = False
    # Beyond the paper: gather negatives from all data-parallel ranks.
    contrastive_gather: bool = False
    # Beyond the paper: learn the temperature (saved with the run's checkpoints, not the model).
    learnable_temperature: bool = False
    # Beyond the paper: per-layer weights "layer:weight,..." (missing layers weigh 1).
    contrastive_layer_weights: str | None = None
    # Contrastive + mixed: the text side is [BOS] + transcript + end-of-turn token, as in the original
    # (False: the transcript alone).
    mixed_contrastive_special_tokens: bool = True
    # Weights of the two terms when combined.
    nwp_loss_weight: float = 1.0
    contrastive_loss_weight: float = 1.0
    # Stop after this many steps whose loss or gradients were not finite (each one is skipped and counted).
    max_nonfinite_steps: int = 20
    # Diagnostics: at logging steps, log each loss term's gradient norm at the projector
    # (grad_norm_<term>; one extra backward pass per term on those steps).
    log_term_grad_norms: bool = False


PAPER_WARMUP = 0.03  # the original scripts' --warmup_ratio


@dataclass
class TrainingArguments(HfTrainingArguments):
    # Paper defaults for stage 1; scripts override what differs.
    output_dir: str = "checkpoints/speech-llava"
    num_train_epochs: float = 5.0
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    # The paper's linear warmup: 3 % of the steps. transformers 5 reads a float below 1 in
    # --warmup_steps as that ratio and has no --warmup_ratio of its own any more.
    warmup_steps: float = PAPER_WARMUP
    # transformers 4's spelling of the same ratio, which the original scripts pass: it sets
    # --warmup_steps (giving both with different values is an error).
    warmup_ratio: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    # The collator adds keys the model signature does not list (transcripts, skip counts).
    remove_unused_columns: bool = False
    report_to: str = "tensorboard"
    logging_steps: float = 10
    # The paper scripts' checkpointing: every 1000 steps, keeping the newest 10. As in the Trainer,
    # `--save_steps N` alone saves every N steps (the strategy already is "steps").
    save_strategy: str = "steps"
    save_steps: float = 1000
    save_total_limit: int | None = 10
    # Throughput in the training logs: audio-seconds/s, tokens/s, padding, MFU on a GPU (llava.train.throughput).
    log_throughput: bool = True
    # Device peak TFLOP/s for the MFU estimate; 0 = the known dense bf16 peak of this GPU (no MFU on a CPU).
    mfu_peak_tflops: float = 0.0

    # Data-loading worker processes per training process (audio decoding off the training loop);
    # -1 = sized from the machine: this process's share of the node's CPUs, less one, at most 8.
    dataloader_num_workers: int = -1
    # Batches each worker prepares ahead (default with workers: 2).
    dataloader_prefetch_factor: int | None = None
    # Keep the workers between epochs (default: on with workers).
    dataloader_persistent_workers: bool | None = None

    def __post_init__(self) -> None:
        self._size_dataloader()
        self._warmup_from_ratio()
        # Without a GPU, accelerate only sets up CPU data parallelism (gloo) when told it runs on CPU;
        # otherwise torchrun would start independent, unsynchronised processes. DeepSpeed keeps its
        # own engine (and its own process group) either way.
        if not self.use_cpu and not self.deepspeed and not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()

    def _warmup_from_ratio(self) -> None:
        if self.warmup_ratio is None:
            return
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps not in (PAPER_WARMUP, self.warmup_ratio):
            raise ValueError(
                f"--warmup_ratio {self.warmup_ratio} and --warmup_steps {self.warmup_steps} both set the "
                "warmup; give one of them"
            )
        self.warmup_steps = self.warmup_ratio

    def _size_dataloader(self) -> None:
        if self.dataloader_num_workers < 0:
            self.dataloader_num_workers = default_dataloader_workers()
        workers = self.dataloader_num_workers > 0
        if self.dataloader_prefetch_factor is None and workers:
            self.dataloader_prefetch_factor = 2
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = workers
        if not workers:  # torch refuses both without workers
            self.dataloader_prefetch_factor = None
            self.dataloader_persistent_workers = False


def default_dataloader_workers(max_workers: int = 8) -> int:
    """Workers per training process: the CPUs this process may use, shared among the processes on
    this node (LOCAL_WORLD_SIZE, set by torchrun), less one for the training loop itself."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(max_workers, cpus // local_processes - 1))


@dataclass
class OriginalFlags:
    """Flags of the original implementation with no setting of their own here, accepted so its
    command lines run unchanged. Each is mapped onto our settings, or ignored with a warning when it
    asks for what happens here anyway; a value we cannot honour is an error (`RULES`)."""

    # = not --freeze_audio_encoder.
    tune_audio_encoder: bool | None = None
    # = not --tune_mm_mlp_adapter.
    freeze_mm_mlp_adapter: bool | None = None
    # With --audio_nwp: add the mixed NWP loss to the contrastive one (= --contr_asr_combine_loss).
    contrastive_combine_loss: bool | None = None
    # Conversation template: llama_3_1 only (our --prompt_format original).
    version: str | None = None
    # Input modality: audio only.
    modality: str | None = None
    # Image input: not supported (nor was it in the original).
    vision_tower: str | None = None
    pretrain_mm_mlp_adapter: str | None = None
    # Speech start/end marker tokens: not used.
    mm_use_speech_start_end: bool | None = None
    # Separate projector learning rate: not supported (the projector trains with --learning_rate).
    mm_projector_lr: float | None = None
    # Q-Former position interpolation: not supported.
    qformer_interpolation: bool | None = None
    qformer_interpolation_config: str | None = None
    # Accepted and ignored (what they asked for happens here anyway, or they had no effect on audio).
    lazy_preprocess: bool | None = None
    is_multimodal: bool | None = None
    filter_broken_samples: bool | None = None
    dataloader_debug: bool | None = None
    organize_eval_dataset_per_task: bool | None = None
    rebuild_dataset_cache: bool | None = None
    tokenizer_padding_side: str | None = None
    sampling_rate: int | None = None
    cache_dir: str | None = None
    mpt_attn_impl: str | None = None
    group_by_modality_length: bool | None = None
    mm_projector_type: str | None = None
    mm_use_im_start_end: bool | None = None
    mm_use_im_patch_token: bool | None = None
    mm_patch_merge_type: str | None = None
    num_steps_between_each_restart: int | None = None
    lr_min: float | None = None
    eval_temperature: float | None = None
    eval_max_new_tokens: int | None = None
    eval_num_batched_generations: int | None = None

    # Per flag: "accepts" (the values we can honour; others are an error) and/or "ignored" (a warning
    # says it has no effect), with the reason.
    RULES: ClassVar[dict[str, dict[str, Any]]] = {
        "tune_audio_encoder": {"why": "mapped to --freeze_audio_encoder"},
        "freeze_mm_mlp_adapter": {"why": "mapped to --tune_mm_mlp_adapter"},
        "contrastive_combine_loss": {"why": "mapped to --contr_asr_combine_loss with --audio_nwp"},
        "version": {"accepts": {"llama_3_1"}, "why": "the chat layout comes from --prompt_format"},
        "modality": {"accepts": {"audio"}, "why": "only audio input is supported"},
        "vision_tower": {"accepts": set(), "why": "image input is not supported"},
        "pretrain_mm_mlp_adapter": {"accepts": set(), "why": "image input is not supported"},
        "mm_use_speech_start_end": {"accepts": {False}, "why": "speech start/end tokens are not used"},
        "mm_projector_lr": {"accepts": set(), "why": "the projector trains with --learning_rate"},
        "qformer_interpolation": {"accepts": {False}, "why": "Q-Former interpolation is not supported"},
        "qformer_interpolation_config": {"accepts": set(), "why": "Q-Former interpolation is not supported"},
        "lazy_preprocess": {"ignored": True, "why": "samples are always prepared when fetched"},
        "is_multimodal": {"ignored": True, "why": "set from the model"},
        "filter_broken_samples": {
            "ignored": True,
            "why": "bad samples are always skipped and counted (--strict_data makes them errors)",
        },
        "dataloader_debug": {"ignored": True, "why": "see python -m llava.dataset.inspect"},
        "organize_eval_dataset_per_task": {"ignored": True, "why": "evaluation runs per test set"},
        "rebuild_dataset_cache": {"ignored": True, "why": "no dataset cache is built"},
        "tokenizer_padding_side": {"ignored": True, "why": "training pads right, generation left"},
        "sampling_rate": {"ignored": True, "why": "taken from the encoder's feature extractor"},
        "cache_dir": {"ignored": True, "why": "set HF_HOME for the download cache"},
        "mpt_attn_impl": {"ignored": True, "why": "use --attn_implementation"},
        "group_by_modality_length": {"ignored": True, "why": "batches are bucketed by audio duration"},
        "mm_projector_type": {"ignored": True, "why": "image projector; see --mm_speech_projector_type"},
        "mm_use_im_start_end": {"ignored": True, "why": "image input is not supported"},
        "mm_use_im_patch_token": {"ignored": True, "why": "image input is not supported"},
        "mm_patch_merge_type": {"ignored": True, "why": "image input is not supported"},
        "num_steps_between_each_restart": {"ignored": True, "why": "use --lr_scheduler_type"},
        "lr_min": {"ignored": True, "why": "use --lr_scheduler_type / --lr_scheduler_kwargs"},
        "eval_temperature": {"ignored": True, "why": "no generation during training; see llava/eval/eval.py"},
        "eval_max_new_tokens": {
            "ignored": True,
            "why": "no generation during training; see llava/eval/eval.py",
        },
        "eval_num_batched_generations": {"ignored": True, "why": "no generation during training"},
    }
