"""`SpeechTrainer`: HF `Trainer`, subclassed narrowly.

What differs from the stock Trainer: the loss (`compute_objective`, every term logged separately),
non-finite steps (skipped, counted, fatal past a limit), skipped-sample counts from the collator,
checkpoints (trainable weights only, in the format `load_pretrained_model` reads) and the training
dataloader (duration buckets). Optimiser, schedule, precision, DeepSpeed, gradient accumulation,
resume and logging are the Trainer's own.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from llava.dataset.sampler import DurationBatchSampler
from llava.model.checkpoint import load_into, read_weights, save_trainable
from llava.train.objectives import Objective, compute_objective

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many training steps produced a NaN/inf loss."""


class SpeechTrainer(Trainer):
    def __init__(
        self,
        *args,
        objective: Objective,
        max_nonfinite_steps: int = 20,
        batch_max_seconds: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.batch_max_seconds = batch_max_seconds
        self.max_nonfinite_steps = max_nonfinite_steps
        # Our losses are per-micro-batch means, so the Trainer must scale them for accumulation itself.
        self.model_accepts_loss_kwargs = False
        # One position-shift offset per batch; seeded per rank so runs repeat exactly.
        self._shift_rng = random.Random(self.args.seed + 1000 * self.args.process_index)
        self._term_sums: dict[str, list[float]] = defaultdict(list)
        self.skipped_samples: Counter[str] = Counter()
        self.nonfinite_steps = 0
        self.add_callback(_EpochCallback())

    # ----------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("skipped", None)
        if skipped:
            self.skipped_samples.update(skipped)
        unwrapped = self.accelerator.unwrap_model(model)
        if inputs["input_ids"].shape[0] == 0:  # every sample of the batch was dropped (and counted)
            loss = _zero_loss(unwrapped)
            return (loss, {"loss": loss}) if return_outputs else loss
        temperature = getattr(unwrapped, "loss_temperature", None)
        tau = temperature() if temperature is not None else None
        loss, terms = compute_objective(unwrapped, inputs, self.objective, self._shift_rng, temperature=tau)
        prefix = "" if model.training else "eval_"
        if model.training and not torch.isfinite(loss):
            loss = self._nonfinite(unwrapped, terms)
        else:
            for name, value in terms.items():
                self._term_sums[prefix + name].append(float(value.detach()))
            if tau is not None:
                self._term_sums["temperature"].append(float(tau.detach()))
        return (loss, {"loss": loss}) if return_outputs else loss

    def _nonfinite(self, model, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        self.nonfinite_steps += 1
        bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v)}
        logger.warning("non-finite loss skipped (%d so far): %s", self.nonfinite_steps, bad)
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_steps} training steps had a non-finite loss (last: {bad}); stopping. "
                "Lower the learning rate, use bf16 instead of fp16, or raise --max_nonfinite_steps."
            )
        return _zero_loss(model)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for name, values in self._term_sums.items():
            if values and (name.startswith("eval_") == any(k.startswith("eval_") for k in logs)):
                logs[name] = sum(values) / len(values)
                values.clear()
        if self.skipped_samples:
            logs["skipped_samples"] = sum(self.skipped_samples.values())
        if self.nonfinite_steps:
            logs["nonfinite_steps"] = self.nonfinite_steps
        super().log(logs, *args, **kwargs)

    # ----------------------------------------------------------------------------- data
    def get_train_dataloader(self) -> DataLoader:
        """Duration-bucketed batches (less padding); rank-aware, deterministic per epoch, so the
        Trainer's resume (skip the first k batches of the epoch) lands on exactly the same data."""
        args = self.args
        world, rank = data_parallel_world()
        sampler = DurationBatchSampler(
            self.train_dataset.durations,
            max_batch_seconds=self.batch_max_seconds or None,
            batch_size=args.per_device_train_batch_size if not self.batch_max_seconds else None,
            num_replicas=world,
            rank=rank,
            seed=args.seed,
            shuffle=True,
            drop_last=args.dataloader_drop_last,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
        )
        prepared = self.accelerator.prepare(loader)
        # The sampler already shards by rank: make accelerate's batch-sampler wrapper a passthrough.
        wrapper = getattr(prepared, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is sampler:
            wrapper.num_processes = 1
            wrapper.process_index = 0
        return prepared

    # ----------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write trainable weights + config only (never the frozen encoder or LLM)."""
        output_dir = output_dir or self.args.output_dir
        if data_parallel_world()[1] != 0:
            return
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is not None:  # DeepSpeed ZeRO-3 hands over the gathered full state dict
            names = set(model.trainable_state_dict())
            state = {k: v for k, v in state_dict.items() if k in names}
            model_state = _StateView(model, state)
            save_trainable(model_state, output_dir)
        else:
            save_trainable(model, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        load_into(model, read_weights(resume_from_checkpoint), source=resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def data_parallel_world() -> tuple[int, int]:
    """(world size, rank) of the data-parallel group actually running.

    Taken from torch.distributed rather than TrainingArguments: with DeepSpeed on CPU the arguments
    report a single process while the engine averages gradients over all of them.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _zero_loss(model) -> torch.Tensor:
    """A zero loss that still touches every trainable parameter: backward gives zero gradients and
    data-parallel ranks stay in step (a rank that skipped backward would hang the others)."""
    return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)


class _EpochCallback(TrainerCallback):
    """Training prompts are redrawn per epoch: tell the dataset which epoch it is."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))


class _StateView:
    """Adapter giving `save_trainable` an explicit state dict with the model's config."""

    def __init__(self, model, state: dict[str, torch.Tensor]) -> None:
        self.config = model.config
        self._state = state

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
