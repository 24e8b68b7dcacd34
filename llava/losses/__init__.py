"""Stage-1 losses as pure tensor functions: NWP, layer-wise contrastive, Wasserstein contrastive.

The trainer runs the LLM passes and hands logits / hidden states over. The Wasserstein loss needs
the optional `geomloss` package, imported on first use, so this package imports without it.
"""

from llava.losses.contrastive import (
    LearnableTemperature,
    all_layers,
    info_nce,
    layerwise_contrastive_loss,
    masked_mean_pool,
    mixed_embedding_contrastive_loss,
    position_shift_ids,
    resolve_layers,
    shifted_position_ids,
)
from llava.losses.distributed import gather_with_grad, is_distributed
from llava.losses.nwp import nwp_loss
from llava.losses.wasserstein import wasserstein_contrastive_loss, wasserstein_similarity

__all__ = [
    "LearnableTemperature",
    "all_layers",
    "gather_with_grad",
    "info_nce",
    "is_distributed",
    "layerwise_contrastive_loss",
    "masked_mean_pool",
    "mixed_embedding_contrastive_loss",
    "nwp_loss",
    "position_shift_ids",
    "resolve_layers",
    "shifted_position_ids",
    "wasserstein_contrastive_loss",
    "wasserstein_similarity",
]
