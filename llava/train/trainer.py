"""`SpeechTrainer`: HF `Trainer`, subclassed narrowly.

What differs from the stock Trainer:
- what it trains: `ObjectiveModule`, the speech model plus the run's objectives (which may own
  parameters, e.g. a learnable temperature); its forward returns the terms, combined with their
  weights, every term logged separately;
- skipped work: rows the collator drops are counted once per row id (`skip_summary`, exact with
  loader workers, which decode in their own processes); batches that cannot be scored (no rows
  left, or one contrastive pair) are skipped and counted; an optimiser step whose loss or gradients
  are not finite, or that saw no scored batch, is skipped with weights and optimiser state left
  bit-identical (fatal past a limit);
- checkpoints: trainable weights only, in the format `load_pretrained_model` reads, plus the
  objectives' own state (`objective.safetensors`) so a resumed run continues exactly;
- the data loaders: duration buckets that never emit a batch too small for the objective.
Optimiser, schedule, precision, DeepSpeed, gradient accumulation, resume and logging are the
Trainer's own. With DeepSpeed the engine steps inside backward, so a skipped step cannot be held
back there (DeepSpeed's own fp16 overflow check still applies).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback

from llava.constants import IGNORE_INDEX
from llava.dataset.sampler import DurationBatchSampler
from llava.dataset.skips import RowSkips, SkipCounter
from llava.fileio import atomic_path
from llava.losses.distributed import data_parallel_world
from llava.model.checkpoint import load_into, read_weights, save_trainable
from llava.train.objectives import ObjectiveSet
from llava.train.row_items import EpochBatches, EpochCallback, RowItems, durations_of

logger = logging.getLogger(__name__)

OBJECTIVE_STATE_NAME = "objective.safetensors"

__all__ = ["NonFiniteLossError", "ObjectiveModule", "SpeechTrainer", "data_parallel_world"]


class NonFiniteLossError(RuntimeError):
    """Too many training steps produced a NaN/inf loss or gradient."""


class ObjectiveModule(nn.Module):
    """What the Trainer trains: the speech model and the objectives, which may own parameters.

    Called with a batch (through DDP when data-parallel, so gradients of every trainable parameter,
    the objectives' included, are averaged), it returns (loss, terms, skip_reason): the weighted sum
    of the named terms, the unweighted terms, and why the batch was not scored (None if it was).
    """

    def __init__(self, model: nn.Module, objective: ObjectiveSet) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    @property
    def config(self):
        return self.model.config

    def forward(self, **batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], str | None]:
        reason = self.objective.skip_reason(int(batch["input_ids"].shape[0]), data_parallel_world()[0])
        if reason is not None:
            return self._anchor(), {}, reason
        terms = self.objective(self.model, batch)
        loss = sum(self.objective.weights[name] * value for name, value in terms.items())
        if torch.is_grad_enabled() and not loss.requires_grad:
            # e.g. a mixed batch whose utterances all became text: a valid loss, zero gradient.
            loss = loss + self._anchor()
        return loss, terms, None

    def _anchor(self) -> torch.Tensor:
        """A zero that touches every trainable parameter: backward gives zero gradients, and
        data-parallel ranks stay in step (a rank that skipped backward would hang the others)."""
        return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        self.model.activation_checkpointing_enable(*args, **kwargs)


class HostCounts:
    """Wraps a collator: adds `num_labelled` (labelled next-token targets, a host int) to each batch,
    counted on the CPU where the batch is built, so the loss need not read it back from the device."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, samples: list) -> dict[str, Any]:
        batch = self.collator(samples)
        labels = batch.get("labels")
        if isinstance(labels, torch.Tensor):
            batch["num_labelled"] = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return batch


class SpeechTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        model: nn.Module,
        objective: ObjectiveSet,
        max_nonfinite_steps: int = 20,
        batch_max_seconds: float = 0.0,
        log_term_grad_norms: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model: the speech model (`SpeechLlavaForCausalLM`), trainable parts set.
            objective: what the run optimises (`llava.train.objectives.build_objective`).
            max_nonfinite_steps: stop after this many steps with a non-finite loss or gradient.
            batch_max_seconds: batch by padded audio seconds instead of a fixed batch size (0 = off).
            log_term_grad_norms: at logging steps, also log each term's gradient norm at the
                projector (one extra backward pass per term on those steps).
        """
        if kwargs.get("data_collator") is not None:
            kwargs["data_collator"] = HostCounts(kwargs["data_collator"])
        super().__init__(*args, model=ObjectiveModule(model, objective), **kwargs)
        self.speech_model = model
        self.objective = objective
        self.batch_max_seconds = batch_max_seconds
        self.max_nonfinite_steps = max_nonfinite_steps
        self.log_term_grad_norms = log_term_grad_norms
        # Our losses are per-micro-batch means, so the Trainer must scale them for accumulation itself.
        self.model_accepts_loss_kwargs = False
        self.row_skips = RowSkips()  # training rows the collator dropped, each row id counted once
        self.skipped_batches: Counter[str] = Counter()  # not scored, by reason
        self.skipped_steps = 0  # optimiser steps held back (non-finite or nothing scored)
        self.nonfinite_steps = 0
        # Logged means: name -> [sum (a device tensor until logging time), count].
        self._term_sums: dict[str, list] = {}
        # The metric prefix while evaluate() runs ("eval", or "eval_<name>" for each of several sets).
        self._eval_prefix: str | None = None
        self._reset_step()
        self._last_skip: str | None = None
        if self.is_deepspeed_enabled:
            logger.warning(
                "with DeepSpeed the optimiser steps inside backward: a non-finite step cannot be held back "
                "here (DeepSpeed's fp16 loss scaling still skips overflowing steps)"
            )
        self.add_callback(EpochCallback())
        self.add_callback(_StepGuard(self))

    # ----------------------------------------------------------------------------- loss
    @property
    def skipped_samples(self) -> Counter[str]:
        """Training rows the collator dropped, by reason, each row counted once (this process)."""
        return self.row_skips.counts()

    def skip_summary(self, load_skips: SkipCounter | None = None) -> SkipCounter:
        """The run's data skips: `load_skips` (rows left out when the dataset was built) plus every
        training row dropped from a batch, counted once per row id over all data-parallel ranks.
        Call it on every rank (it gathers) before reading the result on one."""
        tally = self.row_skips
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.row_skips)
            tally = RowSkips()
            for other in gathered:
                tally.merge(other)
        return tally.counter(load_skips)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("skipped", None)
        skipped_rows = inputs.pop("skipped_rows", None)
        if model.training:  # validation rows are not the training data's skips
            self.row_skips.add_batch(skipped, skipped_rows)
        loss, terms, reason = model(**inputs)
        self._last_skip = reason
        if reason is not None:
            self.skipped_batches[reason] += 1
        elif model.training:
            if self.log_term_grad_norms and self._step_scored == 0 and self._logs_this_step():
                self._record_term_grad_norms(terms)
            self._step_scored += 1
            self._step_loss = self._step_loss + loss.detach()
            for name, value in terms.items():
                self._add(self._step_terms, name, value.detach())
        else:
            prefix = self._eval_prefix or "eval"
            for name, value in terms.items():
                self._add(self._term_sums, f"{prefix}_{name}", value.detach())
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The Trainer's evaluation, remembering the metric prefix so each objective term is logged
        under it: `eval_<term>`, or `eval_<name>_<term>` for each of several validation sets (a dict
        `eval_dataset`, which the Trainer evaluates set by set with the prefix `eval_<name>`)."""
        outer, self._eval_prefix = self._eval_prefix, metric_key_prefix
        try:
            return super().evaluate(
                eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
            )
        finally:
            self._eval_prefix = outer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the objective's loss only; a batch that cannot be scored gives no loss."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return (None if self._last_skip is not None else loss.detach(), None, None)

    @staticmethod
    def _add(store: dict[str, list], name: str, value: torch.Tensor | float) -> None:
        entry = store.setdefault(name, [0.0, 0])
        entry[0] = entry[0] + value
        entry[1] += 1

    def _reset_step(self) -> None:
        self._step_scored = 0  # micro-batches of the current optimiser step that were scored
        self._step_loss: torch.Tensor | float = 0.0
        self._step_terms: dict[str, list] = {}

    def _logs_this_step(self) -> bool:
        """Whether the optimiser step now accumulating ends in a log (or is the first step)."""
        every = int(self.state.logging_steps or 0)
        step = self.state.global_step + 1
        return step == 1 or (every > 0 and step % every == 0)

    def _record_term_grad_norms(self, terms: dict[str, torch.Tensor]) -> None:
        """Gradient norm of each weighted term w.r.t. the projector's trainable parameters."""
        params = [p for p in self.speech_model.projector.parameters() if p.requires_grad]
        if not params:
            return
        for name, value in terms.items():
            if not value.requires_grad:
                continue
            grads = torch.autograd.grad(
                self.objective.weights[name] * value, params, retain_graph=True, allow_unused=True
            )
            norms = [g.float().norm() for g in grads if g is not None]
            if norms:
                self._add(self._term_sums, f"grad_norm_{name}", torch.stack(norms).norm())

    # ----------------------------------------------------------------------------- optimiser step
    def _guard_optimizer_step(self) -> None:
        """Before each optimiser step: hold it back (every gradient set to None, which torch
        optimisers skip entirely, state included) when no micro-batch was scored or the loss or a
        gradient is not finite. One host sync per optimiser step (plus one all-reduce when
        data-parallel, so every rank decides alike)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        device = self.args.device
        bad = torch.zeros((), device=device)
        if self._step_scored:
            bad = bad + (~torch.isfinite(torch.as_tensor(self._step_loss, device=device))).float()
        if grads:
            norms = torch.stack([n.float() for n in torch._foreach_norm(grads)]).to(device)
            bad = bad + (~torch.isfinite(norms)).any().float()
        flags = torch.stack([torch.tensor(float(self._step_scored), device=device), bad])
        world, _ = data_parallel_world()
        if world > 1:
            dist.all_reduce(flags)
        scored, nonfinite = flags.tolist()
        if scored and not nonfinite:
            for name, (total, count) in self._step_terms.items():
                entry = self._term_sums.setdefault(name, [0.0, 0])
                entry[0], entry[1] = entry[0] + total, entry[1] + count
            self._reset_step()
            return
        step = self.state.global_step + 1
        bad_terms = {k: float(t / n) for k, (t, n) in self._step_terms.items() if not torch.isfinite(t / n)}
        self._reset_step()
        if self.is_deepspeed_enabled:  # the engine has stepped inside backward already: report only
            if nonfinite:
                self.nonfinite_steps += 1
                logger.warning("step %d: non-finite loss or gradient (DeepSpeed steps inside backward)", step)
        else:
            for p in params:
                p.grad = None
            self.skipped_steps += 1
            if not scored:
                logger.warning(
                    "step %d skipped: no batch of it could be scored (%s)", step, dict(self.skipped_batches)
                )
                return
            self.nonfinite_steps += 1
            logger.warning(
                "step %d skipped: non-finite %s (%d so far); weights and optimiser state unchanged",
                step,
                f"loss terms {bad_terms}" if bad_terms else "gradients",
                self.nonfinite_steps,
            )
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_steps} training steps had a non-finite loss or gradient (last: "
                f"{bad_terms or 'gradients'}); stopping. Lower the learning rate, use bf16 instead of fp16, "
                "or raise --max_nonfinite_steps."
            )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        prefix = self._eval_prefix  # set while evaluate() runs: these are that set's metrics
        is_eval = prefix is not None or any(k.startswith("eval_") for k in logs)
        head = f"{prefix or 'eval'}_"
        for name in [n for n in self._term_sums if n.startswith(head) == is_eval]:
            total, count = self._term_sums.pop(name)
            logs[name] = float(total / count)  # the host sync of the logged values, once per log
        if not is_eval:
            logs.update(self.objective.log_values())
            if self.row_skips.total:
                logs["skipped_samples"] = self.row_skips.total
            if self.skipped_batches:
                logs["skipped_batches"] = sum(self.skipped_batches.values())
            if self.skipped_steps:
                logs["skipped_steps"] = self.skipped_steps
            if self.nonfinite_steps:
                logs["nonfinite_steps"] = self.nonfinite_steps
        super().log(logs, *args, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        # The objectives' own parameters (a log-temperature) are scales, not weights: no decay.
        return [n for n in super().get_decay_parameter_names(model) if not n.startswith("objective.")]

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
            min_batch_size=self.objective.min_rows(world),
        )
        dataset, batches = RowItems(self.train_dataset), sampler
        if (
            args.dataloader_persistent_workers
            and args.dataloader_num_workers > 0
            and hasattr(self.train_dataset, "set_epoch")
        ):
            batches = EpochBatches(sampler)
        prepared = self.accelerator.prepare(self._loader(dataset, batches, persistent=True))
        # The sampler already shards by rank: make accelerate's batch-sampler wrapper a passthrough.
        wrapper = getattr(prepared, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is batches:
            wrapper.num_processes = 1
            wrapper.process_index = 0
        return prepared

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """Evaluation batches in duration order, never smaller than the objective needs (an odd-sized
        eval set must not end in a one-pair contrastive batch)."""
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        durations = durations_of(dataset)
        if durations is None:
            return super().get_eval_dataloader(eval_dataset)
        world, rank = data_parallel_world()
        sampler = DurationBatchSampler(
            durations,
            batch_size=self.args.per_device_eval_batch_size,
            num_replicas=world,
            rank=rank,
            shuffle=False,
            min_batch_size=self.objective.min_rows(world),
        )
        # Not passed through accelerate: its end-of-data truncation assumes fixed-size batches.
        # prediction_step moves each batch to the device.
        return self._loader(dataset, sampler)

    def _loader(self, dataset: Dataset, sampler, persistent: bool = False) -> DataLoader:
        """`persistent`: keep the workers between epochs (the training loader; evaluation loaders are
        built anew each time, so persistent workers would only pile up)."""
        args = self.args
        workers = args.dataloader_num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            persistent_workers=persistent and bool(args.dataloader_persistent_workers) and workers > 0,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write trainable weights + config (never the frozen encoder or LLM), and the objectives'
        own state beside them (`objective.safetensors`, which inference never reads)."""
        output_dir = output_dir or self.args.output_dir
        if data_parallel_world()[1] != 0:
            return
        model = self.speech_model
        if state_dict is not None:  # DeepSpeed ZeRO-3 hands over the gathered state dict of ObjectiveModule
            names = set(model.trainable_state_dict())
            state = {k[6:]: v for k, v in state_dict.items() if k.startswith("model.") and k[6:] in names}
            save_trainable(_StateView(model, state), output_dir)
            objective_state = {k[10:]: v for k, v in state_dict.items() if k.startswith("objective.")}
        else:
            save_trainable(model, output_dir)
            objective_state = self.objective.state_dict()
        if objective_state:
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in objective_state.items()}
            with atomic_path(Path(output_dir) / OBJECTIVE_STATE_NAME) as tmp:
                save_file(tensors, str(tmp), metadata={"objectives": ",".join(self.objective.names)})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_into(self.speech_model, read_weights(resume_from_checkpoint), source=resume_from_checkpoint)
        own = self.objective.state_dict()
        path = Path(resume_from_checkpoint) / OBJECTIVE_STATE_NAME
        if not own:
            return
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing, but this run's objectives have state of their own ({sorted(own)}); "
                "the checkpoint cannot be resumed exactly"
            )
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        if set(state) != set(own):
            raise ValueError(
                f"{path}: holds {sorted(state)} but this run's objectives have {sorted(own)} "
                "(was it trained with other loss settings?)"
            )
        self.objective.load_state_dict(state)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class _StepGuard(TrainerCallback):
    """Runs the trainer's check between backward and the optimiser step."""

    def __init__(self, trainer: SpeechTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._guard_optimizer_step()


class _StateView:
    """Adapter giving `save_trainable` an explicit state dict with the model's config."""

    def __init__(self, model, state: dict[str, torch.Tensor]) -> None:
        self.config = model.config
        self._state = state

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
