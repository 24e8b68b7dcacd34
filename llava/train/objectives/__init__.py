"""Training objectives: a registry of small loss objects that the trainer combines with weights.

    nwp                       CE on the target tokens of chat-templated sequences (ASR pretraining, fine-tuning)
    contrastive_average       per layer l: InfoNCE(pool(text_l), pool(speech_l)), cosine similarity
    contrastive_wasserstein   as average, with -Sinkhorn divergence between token sets as the similarity
    mixed                     CE on the text tokens of interleaved speech/text sequences
    mixed_contrastive         layer-0 InfoNCE between pooled [BOS]+transcript+end and the pooled mixed sequence

`build_objective` turns the training flags into the `ObjectiveSet` a run optimises, e.g.
contr-cos-all+asr = contrastive_average over the "all" layers + nwp, weighted 1:1.
"""

from __future__ import annotations

from llava.model.layers import resolve_layers
from llava.train.arguments import DataArguments, LossArguments
from llava.train.objectives.base import Objective, ObjectiveSet, StepInputs, Temperature
from llava.train.objectives.contrastive import (
    AverageContrastive,
    ContrastiveObjective,
    WassersteinContrastive,
)
from llava.train.objectives.mixed import MixedContrastive
from llava.train.objectives.nwp import MixedNwpObjective, NwpObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (NwpObjective, AverageContrastive, WassersteinContrastive, MixedNwpObjective, MixedContrastive)
}
# --contrastive_mode -> the contrastive objective it selects.
CONTRASTIVE_MODES: dict[str, str] = {
    "average": AverageContrastive.name,
    "wasserstein": WassersteinContrastive.name,
}

__all__ = [
    "CONTRASTIVE_MODES",
    "OBJECTIVES",
    "ContrastiveObjective",
    "Objective",
    "ObjectiveSet",
    "StepInputs",
    "Temperature",
    "build_objective",
    "get_objective",
    "parse_layer_weights",
]


def get_objective(name: str) -> type[Objective]:
    """The objective class registered as `name`; an unknown name is an error listing the known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; known objectives: {sorted(OBJECTIVES)}") from None


def parse_layer_weights(text: str | None, layers: list[int], num_llm_layers: int) -> dict[int, float]:
    """`--contrastive_layer_weights "l:w,..."` -> {layer: weight}; layers as in `resolve_layers`."""
    if not text:
        return {}
    weights: dict[int, float] = {}
    for item in text.split(","):
        try:
            layer, weight = item.split(":")
            weights[resolve_layers(layer.strip(), num_llm_layers)[0]] = float(weight)
        except ValueError:
            raise ValueError(
                f"--contrastive_layer_weights: bad item {item!r}; expected 'layer:weight,...'"
            ) from None
    unknown = sorted(set(weights) - set(layers))
    if unknown:
        raise ValueError(
            f"--contrastive_layer_weights names layers {unknown} not in --contrastive_layer {layers}"
        )
    return weights


def build_objective(loss: LossArguments, data: DataArguments, num_llm_layers: int) -> ObjectiveSet:
    """Validate the loss flags against each other and the LLM depth (before any training) and build
    the run's objectives: nwp | contrastive_<mode> [+ nwp] | mixed | mixed_contrastive [+ mixed]."""
    if loss.contrastive_mode not in CONTRASTIVE_MODES:
        raise ValueError(
            f"--contrastive_mode {loss.contrastive_mode!r}: expected one of {sorted(CONTRASTIVE_MODES)}"
        )
    try:
        layers = resolve_layers(loss.contrastive_layer, num_llm_layers)
    except ValueError as e:
        raise ValueError(f"--contrastive_layer: {e}") from None
    layer_weights = parse_layer_weights(loss.contrastive_layer_weights, layers, num_llm_layers)
    if loss.learnable_temperature and not loss.contrastive_training:
        raise ValueError(
            "--learnable_temperature needs --contrastive_training True (no temperature otherwise)"
        )
    temperature = dict(
        temperature=loss.contrastive_temperature,
        learnable_temperature=loss.learnable_temperature,
        symmetric=loss.contrastive_symmetric,
        gather=loss.contrastive_gather,
    )
    weights = {}
    if data.audio_nwp:
        parts: list[Objective] = []
        if loss.contrastive_training:
            if layers != [0]:
                raise ValueError("contrastive + mixed compares embeddings only: use --contrastive_layer 0")
            if loss.contrastive_mode != "average":
                raise ValueError("contrastive + mixed supports --contrastive_mode average only")
            parts.append(
                MixedContrastive(**temperature, text_special_tokens=loss.mixed_contrastive_special_tokens)
            )
            weights[MixedContrastive.name] = loss.contrastive_loss_weight
        if not loss.contrastive_training or loss.contr_asr_combine_loss:
            parts.append(MixedNwpObjective())
            weights[MixedNwpObjective.name] = loss.nwp_loss_weight
        return ObjectiveSet(parts, weights)
    if not loss.contrastive_training:
        return ObjectiveSet([NwpObjective()], {NwpObjective.name: loss.nwp_loss_weight})
    contrastive = get_objective(CONTRASTIVE_MODES[loss.contrastive_mode])(
        layers,
        **temperature,
        layer_weights=layer_weights,
        max_position_shift=loss.max_position_shift if loss.position_shift else 0,
    )
    parts = [contrastive]
    weights = {contrastive.name: loss.contrastive_loss_weight}
    if loss.contr_asr_combine_loss:
        parts.append(NwpObjective())
        weights[NwpObjective.name] = loss.nwp_loss_weight
    return ObjectiveSet(parts, weights)
