"""Next-word prediction (NWP) loss: shifted token-level cross-entropy on labelled positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX


def nwp_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of a batch.

    Position t of `logits` predicts `labels[:, t + 1]`; positions whose (shifted) label equals
    `ignore_index` do not count. The mean is over labelled tokens of the whole batch (not per row),
    as in Hugging Face causal-LM models.

    Only the labelled rows of `logits` are selected before the cast to fp32, so a bf16 model with a
    large vocabulary (128k for Llama 3) does not materialise an fp32 copy of all its logits.

    Args:
        logits: [B, L, V] (any float dtype; the loss is computed in fp32).
        labels: [B, L] long, `ignore_index` outside the target.
        ignore_index: label value that is not scored.

    Returns:
        A scalar fp32 tensor.

    Raises:
        ValueError: on mismatched shapes, or when no token of the batch is labelled (a mean over
            zero tokens is undefined; silently returning 0 or NaN would hide a data bug).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits [B, L] = {tuple(logits.shape[:2])}"
        )
    shift_labels = labels[:, 1:]  # [B, L-1]
    labelled = shift_labels != ignore_index  # [B, L-1]
    if not bool(labelled.any()):
        raise ValueError(
            "nwp_loss: no labelled token in the batch (every shifted label equals "
            f"ignore_index={ignore_index}); check the collator's labels"
        )
    picked = logits[:, :-1][labelled].float()  # [N, V]
    return F.cross_entropy(picked, shift_labels[labelled], reduction="mean")
