"""Next-word prediction: cross-entropy on the labelled tokens of the spliced sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llava.train.objectives.base import Objective, StepInputs


class NwpObjective(Objective):
    """CE on the target tokens of chat-templated sequences (ASR pretraining, fine-tuning).

    Runs the LLM once on the spliced sequence and the LM head on the labelled positions only
    (`labelled_logits`); the loss equals the causal-LM loss over the full logits. The text every row
    starts with (the system turn) comes from the frozen LLM's prefix cache when it can
    (`shared_prefix_length`).
    """

    name = "nwp"

    def term_weights(self) -> dict[str, float]:
        return {"nwp": 1.0}

    def forward(self, model: nn.Module, step: StepInputs) -> dict[str, torch.Tensor]:
        batch = step.batch
        if step.batch_size == 0:  # only with a gathering objective beside it: nothing to score here
            return {"nwp": torch.zeros((), device=batch["input_ids"].device)}
        last = model.num_llm_layers
        ids, labels = batch["input_ids"], batch["labels"]
        skip = model.shared_prefix_length(ids, batch["attention_mask"], labels)
        prefix = ids[0, :skip] if skip else None
        hidden = model.hidden_states(step.spliced, batch["attention_mask"], [last], prefix_ids=prefix)[last]
        # hidden: [B, L - skip, D], the positions after the shared prefix (none of which it labels)
        logits, targets = model.labelled_logits(hidden, labels[:, skip:], batch.get("num_labelled"))
        return {"nwp": F.cross_entropy(logits.float(), targets)}


class MixedNwpObjective(NwpObjective):
    """CE on the text tokens of interleaved speech/text sequences (mixed NWP pretraining)."""

    name = "mixed"
    collator_mode = "mixed"
