"""Start a training stage from an earlier stage's checkpoint: projector, LoRA adapters and anything
else that stage trained (`--init_from CKPT`).

A multi-stage curriculum (e.g. LTU-AS: projector only, then projector + LoRA, then all tasks) continues
each stage from the weights the previous one ended with, but with a fresh optimiser and schedule
(unlike `--resume_from_checkpoint`, which continues an interrupted run of one stage). Every tensor
of the checkpoint is copied into the model after this run's LoRA adapters exist; tensors this run
trains that the checkpoint lacks (e.g. LoRA added in this stage) keep their fresh initialisation and
are reported.

Refused, with a message naming the checkpoint and the flag to change: a checkpoint tensor the model
does not have (LoRA adapters from a stage that had them while this run has none, or on other modules),
a shape mismatch (other projector settings, LoRA rank, encoder or LLM), another projector type. LoRA
scaling settings (alpha, rsLoRA) that differ from the checkpoint's are allowed and logged: the
continued adapters then act with another scale.
"""

from __future__ import annotations

import logging
import os

from llava.model.checkpoint import load_into, read_config, read_weights

logger = logging.getLogger(__name__)

__all__ = ["init_from_checkpoint"]

_LORA_FLAGS = {"llm": "--lora_enable True", "encoder": "--lora_encoder True"}
_LORA_PREFIX = {"llm": "--lora_", "encoder": "--encoder_lora_"}


def _check_lora(ckpt_lora: dict, run_lora: dict, ckpt_dir: str) -> None:
    for component, settings in ckpt_lora.items():
        mine = run_lora.get(component)
        if mine is None:
            raise ValueError(
                f"--init_from {ckpt_dir}: the checkpoint has {component} LoRA adapters "
                f"(r={settings.get('r')}, target_modules={settings.get('target_modules')}) but this run has "
                f"none; continue them with {_LORA_FLAGS[component]} and the same settings"
            )
        for key in ("r", "target_modules"):
            if mine.get(key) != settings.get(key):
                raise ValueError(
                    f"--init_from {ckpt_dir}: {component} LoRA {key} is {settings.get(key)!r} in the "
                    f"checkpoint but {mine.get(key)!r} here ({_LORA_PREFIX[component]}{key})"
                )
        changed = {
            k: (settings.get(k), mine.get(k))
            for k in ("alpha", "use_rslora")
            if settings.get(k) != mine.get(k)
        }
        if changed:
            logger.warning(
                "--init_from %s: %s LoRA scaling differs from the checkpoint's (checkpoint, here): %s",
                ckpt_dir,
                component,
                changed,
            )


def init_from_checkpoint(model, ckpt_dir: str | os.PathLike) -> list[str]:
    """Copy every tensor of an earlier stage's checkpoint into `model` (LoRA already applied).

    Returns the names of the tensors this run trains that the checkpoint did not provide (they keep
    their fresh initialisation). Raises ValueError / FileNotFoundError naming the checkpoint.
    """
    ckpt_dir = str(ckpt_dir)
    config = read_config(ckpt_dir)
    if config.projector_type != model.config.projector_type:
        raise ValueError(
            f"--init_from {ckpt_dir}: the checkpoint's projector is {config.projector_type!r}, this run's "
            f"{model.config.projector_type!r} (--mm_speech_projector_type)"
        )
    _check_lora(config.lora or {}, model.config.lora or {}, ckpt_dir)
    weights = read_weights(ckpt_dir)
    if not weights:
        raise ValueError(f"--init_from {ckpt_dir}: the checkpoint holds no tensors")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    fresh = load_into(
        model, weights, source=f"--init_from {ckpt_dir}", expected=trainable, allow_missing=True
    )
    logger.info(
        "initialised %d tensors from %s%s",
        len(weights),
        ckpt_dir,
        f"; {len(fresh)} trainable tensors start fresh (e.g. {fresh[0]})" if fresh else "",
    )
    return fresh
