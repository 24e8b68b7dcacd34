"""The objective contract: small loss objects that own their parameters and return named terms.

An `Objective` reads one batch through the few operations the model exposes (`embed_audio`,
`splice`, `hidden_states`, `labelled_logits`) and returns its loss terms by name, unweighted. An
`ObjectiveSet` is what a run optimises: one or more objectives, a weight per term, and what the data
side must provide for them. The trainer combines the terms with those weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import nn

from llava.losses.contrastive import LearnableTemperature

COLLATOR_MODES = ("chat", "mixed")


class StepInputs:
    """One batch and the model computations several objectives share, each done at most once.

    One batch, one encoder pass: the projector outputs feed every term (the NWP splice and the
    contrastive speech pass alike).
    """

    def __init__(self, model: nn.Module, batch: Mapping[str, Any]) -> None:
        self.model = model
        self.batch = batch

    @property
    def batch_size(self) -> int:
        return int(self.batch["input_ids"].shape[0])

    @cached_property
    def audio(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(embeds [N, Q, Dl], mask [N, Q]) of the batch's audio segments; None without any.

        A mixed batch whose utterances all became text spans carries audio_values of shape [0, S].
        """
        values = self.batch.get("audio_values")
        if values is None or values.shape[0] == 0:
            return None
        return self.model.embed_audio(values, self.batch["audio_lengths"])

    @cached_property
    def spliced(self) -> torch.Tensor:
        """input_ids with the audio runs replaced by the projector outputs: [B, L, Dl]."""
        embeds, mask = self.audio if self.audio is not None else (None, None)
        return self.model.splice(self.batch["input_ids"], embeds, mask)


class Objective(nn.Module):
    """One loss component. Subclasses set the class attributes and implement `forward`.

    forward(model, step) -> {term name: scalar loss}, unweighted; `term_weights` gives each term's
    weight relative to the objective's own weight (e.g. per-layer weights of a contrastive loss).
    """

    name: ClassVar[str]
    collator_mode: ClassVar[str] = "chat"  # chat-templated sequences or interleaved speech/text ones
    needs_transcript: ClassVar[bool] = False  # the batch must carry text_input_ids / text_attention_mask
    min_pairs: ClassVar[int] = 1  # a batch with fewer rows cannot be scored (and is skipped)
    transcript_special_tokens: bool = False  # the transcript side as [BOS] + transcript + end token
    gather: bool = False  # takes part in a collective across data-parallel ranks every step

    def term_weights(self) -> dict[str, float]:
        """The terms `forward` returns, each with its weight within this objective."""
        raise NotImplementedError

    def forward(self, model: nn.Module, step: StepInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def log_values(self) -> dict[str, float]:
        """Values worth logging besides the terms (read at logging time only: no per-step sync)."""
        return {}


class Temperature(nn.Module):
    """τ of a contrastive objective: a fixed float, or a `LearnableTemperature` that the optimiser
    trains and the trainer saves with the run's state (never in the model's checkpoint)."""

    def __init__(self, init: float = 0.1, learnable: bool = False) -> None:
        super().__init__()
        if not init > 0:
            raise ValueError(f"contrastive temperature must be > 0, got {init}")
        self.init = init
        self.learned = LearnableTemperature(init) if learnable else None

    def forward(self) -> torch.Tensor | float:
        return self.learned() if self.learned is not None else self.init

    def log_values(self) -> dict[str, float]:
        return {} if self.learned is None else {"temperature": float(self.learned().detach())}


class ObjectiveSet(nn.Module):
    """What one run optimises: objectives with a weight per term (Σ weight · term is the loss)."""

    def __init__(self, objectives: Sequence[Objective], weights: Mapping[str, float] | None = None) -> None:
        """`weights` maps an objective's name to its weight (default 1); its terms' own relative
        weights multiply in."""
        super().__init__()
        if not objectives:
            raise ValueError("an ObjectiveSet needs at least one objective")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - {o.name for o in objectives})
        if unknown:
            raise ValueError(f"weights for objectives not in the set: {unknown}")
        modes = {o.collator_mode for o in objectives}
        if len(modes) > 1:
            raise ValueError(
                f"objectives {[o.name for o in objectives]} need different batches ({sorted(modes)}): "
                "they cannot be combined"
            )
        self.parts = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for objective in objectives:
            if objective.name in self.parts:
                raise ValueError(f"objective {objective.name!r} appears twice")
            self.parts[objective.name] = objective
            for term, w in objective.term_weights().items():
                if term in self.weights:
                    raise ValueError(f"two objectives return a term named {term!r}")
                self.weights[term] = weights.get(objective.name, 1.0) * w

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    @property
    def collator_mode(self) -> str:
        return next(iter(self.parts.values())).collator_mode

    @property
    def needs_transcript(self) -> bool:
        return any(o.needs_transcript for o in self.parts.values())

    @property
    def transcript_special_tokens(self) -> bool:
        return any(o.transcript_special_tokens for o in self.parts.values())

    def min_rows(self, world: int = 1) -> int:
        """Fewest rows a batch needs on one rank (negatives gathered from other ranks count too)."""
        if world > 1 and any(o.gather for o in self.parts.values()):
            return 1
        return max(o.min_pairs for o in self.parts.values())

    def skip_reason(self, rows: int, world: int = 1) -> str | None:
        """Why a batch of `rows` rows cannot be scored (None: it can). Such a batch is skipped and
        counted by the trainer; it arises when the collator drops bad samples from a batch."""
        if world > 1 and any(o.gather for o in self.parts.values()):
            return None  # every rank must take part in the gathers, even with no rows of its own
        if rows == 0:
            return "empty_batch"
        if rows < self.min_rows(world):
            return "too_few_pairs"
        return None

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """All terms of all objectives for one batch (the encoder and splice run once)."""
        step = StepInputs(model, batch)
        terms: dict[str, torch.Tensor] = {}
        for objective in self.parts.values():
            terms.update(objective(model, step))
        return terms

    def log_values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for objective in self.parts.values():
            out.update(objective.log_values())
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {v:g}" for k, v in self.weights.items())
