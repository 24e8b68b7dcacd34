"""Training throughput in the logs: audio-seconds/s, utterances/s, tokens/s, padding and MFU.

`ThroughputMeter` is a `TrainerCallback` that the trainer also shows every training micro-batch
(`observe`). Counts accumulate as device tensors, so metering adds no host synchronisation to the step;
they are read once per logging interval. What it adds to each training log (and so to the progress
bar and TensorBoard):

    audio_seconds_per_second   valid audio (padding excluded) per wall-clock second
    utterances_per_second      batch rows per second
    tokens_per_second          non-padding tokens of the chat/mixed sequences per second
    audio_padding              fraction of the audio tensor that is padding
    token_padding              fraction of the token tensor that is padding
    mfu                        model FLOPs / time / device peak (GPU only; an estimate from
                               `llava.model.flops`, recomputation excluded)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from llava.constants import IGNORE_INDEX
from llava.model.flops import EncoderShape, LLMPass, LLMShape, QFormerShape, device_peak_tflops, step_flops

logger = logging.getLogger(__name__)

# batch -> (FLOPs known from shapes, FLOPs per labelled token): the second part is multiplied by a
# count that stays on the device until the log.
FlopsFn = Callable[[dict[str, Any]], tuple[float, float]]


class ThroughputMeter(TrainerCallback):
    def __init__(self, sampling_rate: int, flops_fn: FlopsFn | None = None, peak_tflops: float | None = None):
        self.sampling_rate = sampling_rate
        self.flops_fn = flops_fn
        self.peak_flops = peak_tflops * 1e12 if peak_tflops else None
        self._start: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.utterances = 0
        self.audio_slots = 0
        self.token_slots = 0
        self.shape_flops = 0.0
        self._audio = self._tokens = self._labelled_flops = None  # device tensors

    @staticmethod
    def _acc(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().to(torch.float64)
        return value if total is None else total + value

    def observe(self, inputs: dict[str, Any], training: bool = True) -> None:
        """Count one micro-batch (training only; evaluation batches are ignored)."""
        if not training or self._start is None:
            return
        ids = inputs.get("input_ids")
        if ids is None:
            return
        self.utterances += ids.shape[0]
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.token_slots += mask.numel()
            self._tokens = self._acc(self._tokens, mask.sum())
        audio, lengths = inputs.get("audio_values"), inputs.get("audio_lengths")
        if audio is not None and lengths is not None and audio.numel():
            self.audio_slots += audio.numel()
            self._audio = self._acc(self._audio, lengths.sum())
        if self.flops_fn is not None:
            fixed, per_label = self.flops_fn(inputs)
            self.shape_flops += fixed
            labels = inputs.get("labels")
            if per_label and labels is not None:
                count = (labels[:, 1:] != IGNORE_INDEX).sum()
                self._labelled_flops = self._acc(self._labelled_flops, count * per_label)

    def metrics(self) -> dict[str, float]:
        """Rates since the previous call (one host read of the accumulated counts); then reset."""
        now = time.perf_counter()
        if self._start is None or self.utterances == 0:
            self._start = now
            return {}
        elapsed = max(now - self._start, 1e-9)
        out = {"utterances_per_second": self.utterances / elapsed}
        if self._tokens is not None:
            tokens = float(self._tokens)
            out["tokens_per_second"] = tokens / elapsed
            out["token_padding"] = 1.0 - tokens / max(self.token_slots, 1)
        if self._audio is not None:
            samples = float(self._audio)
            out["audio_seconds_per_second"] = samples / self.sampling_rate / elapsed
            out["audio_padding"] = 1.0 - samples / max(self.audio_slots, 1)
        if self.flops_fn is not None and self.peak_flops:
            flops = self.shape_flops + (
                float(self._labelled_flops) if self._labelled_flops is not None else 0.0
            )
            out["mfu"] = flops / elapsed / self.peak_flops
        self._reset()
        self._start = now
        return out

    # ------------------------------------------------------------------------- callback events
    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()
        self._start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or any(k.startswith("eval_") for k in logs):
            return
        extra = self.metrics()
        logs.update(extra)
        history = state.log_history
        if extra and history and history[-1].get("step") == state.global_step:
            history[-1].update(extra)  # the Trainer appended this log before the callbacks ran

    def on_evaluate(self, args, state, control, **kwargs):
        # Evaluation time is not training throughput: restart the interval after it.
        self._start = time.perf_counter()


def resolve_peak_tflops(requested: float) -> float | None:
    """The device peak for MFU: `requested` when > 0, else the known peak of this GPU (None on CPU)."""
    if requested > 0:
        return requested
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = device_peak_tflops(name)
    if peak is None:
        logger.info("no known peak for %s: pass --mfu_peak_tflops to log MFU", name)
    return peak


def objective_passes(objective) -> tuple[bool, list[int]] | None:
    """(runs NWP, contrastive LLM layers) of an objective set (or of a single objective with
    `kind`/`nwp`/`layers`); None when a part is unknown to the FLOP model."""
    parts = getattr(objective, "parts", None)
    if parts is None:
        kind = getattr(objective, "kind", None)
        if kind not in ("nwp", "contrastive", "mixed", "mixed_contrastive"):
            return None
        layers = list(getattr(objective, "layers", None) or []) if kind == "contrastive" else []
        return bool(getattr(objective, "nwp", kind in ("nwp", "mixed"))), layers
    nwp, layers = False, set()
    for part in parts.values():
        name = getattr(part, "name", "")
        if name in ("nwp", "mixed"):
            nwp = True
        elif name.startswith("contrastive_") and hasattr(part, "layers"):
            layers.update(part.layers)
        elif name != "mixed_contrastive":  # embeddings only: no LLM pass
            return None
    return nwp, sorted(layers)


def objective_flops_fn(model, objective, checkpointing: bool) -> FlopsFn | None:
    """A FLOP estimate per micro-batch for `objective` on `model`, or None when it cannot be modelled
    (non-wav2vec2-family encoder, an objective the FLOP model does not know)."""
    described = objective_passes(objective)
    if described is None:
        logger.info("MFU not estimated: objective %r is not in the FLOP model", objective)
        return None
    nwp, layers = described
    tower = model.audio_tower
    if tower.kind.whisper:
        logger.info("MFU not estimated: the FLOP model has no Whisper encoder")
        return None
    llm = LLMShape.from_config(model.language_model.config)
    encoder = EncoderShape.from_config(tower.model.config, tower.layer)
    settings = getattr(model.projector, "settings", None)
    qformer = None
    if hasattr(settings, "num_queries"):
        qformer = QFormerShape(
            layers=settings.num_layers,
            hidden=settings.hidden_size,
            ffn=settings.intermediate_size,
            queries=settings.num_queries,
            window=model.projector.window,
            encoder_dim=tower.hidden_size,
            llm_dim=llm.hidden,
        )
    labelled_only = hasattr(model, "labelled_logits")
    deepest = max(layers) if layers else 0

    def flops(batch: dict[str, Any]) -> tuple[float, float]:
        rows, length = batch["input_ids"].shape
        audio = batch.get("audio_values")
        n_audio, samples = (audio.shape[0], audio.shape[1]) if audio is not None else (0, 0)
        frames = encoder.frames(samples)
        passes, per_label = [], 0.0
        if nwp:
            head = 0 if labelled_only else rows * length
            # The shared text the NWP pass last took from the prefix cache (the system turn: the same
            # every step; reading it adds no host sync, recomputing it per batch would).
            prefix = min(model.prefix_cache.last_length, length - 1)
            passes.append(LLMPass(rows, length, llm.layers, True, checkpointing, head, prefix))
            if labelled_only:
                per_label = 2 * 2 * llm.hidden * llm.vocab  # forward + input-gradient of the LM head
        if layers and deepest > 0:
            q = int(model.projector.output_lengths(torch.tensor([frames]))[0])  # speech-pass length
            passes.append(LLMPass(n_audio, q, deepest, True, checkpointing))
            text = batch.get("text_input_ids")
            if text is not None and getattr(model, "text_cache", None) is None:  # else read from disk
                passes.append(LLMPass(text.shape[0], text.shape[1], deepest, False))
        cached = getattr(tower, "feature_cache", None) is not None  # no encoder work on hits
        windows = n_audio * -(-frames // qformer.window) if qformer else 0
        total = step_flops(None if cached else encoder, qformer, llm, n_audio, samples, passes, windows)
        return total.model, per_label

    return flops


def attach_throughput(trainer, sampling_rate: int, peak_tflops: float = 0.0) -> ThroughputMeter:
    """Meter `trainer`'s training batches and add the rates to its training logs.

    The meter sees each batch through a forward pre-hook on the trained module (which the Trainer
    calls with the batch as keyword arguments), and runs first among the callbacks so the values it
    adds to a log reach the progress bar, TensorBoard and the state's log history alike."""
    peak = resolve_peak_tflops(peak_tflops)
    flops_fn = None
    if peak:
        speech_model = getattr(trainer.model, "model", trainer.model)
        objective = getattr(trainer, "objective", None)
        flops_fn = objective_flops_fn(speech_model, objective, bool(trainer.args.gradient_checkpointing))
    meter = ThroughputMeter(sampling_rate, flops_fn, peak)
    trainer.callback_handler.callbacks.insert(0, meter)
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: meter.observe(kwargs, module.training), with_kwargs=True
    )
    return meter
