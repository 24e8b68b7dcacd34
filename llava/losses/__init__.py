"""Stage-1 losses as pure tensor functions: layer-wise contrastive and Wasserstein contrastive.

The objectives (`llava.train.objectives`) run the LLM passes and hand hidden states over. The
Wasserstein loss needs the optional `geomloss` package, imported on first use, so this package
imports without it.
"""

from llava.losses.contrastive import (
    LearnableTemperature,
    info_nce,
    layerwise_contrastive_loss,
    masked_mean_pool,
    mixed_embedding_contrastive_loss,
    shifted_position_ids,
)
from llava.losses.distributed import data_parallel_world, gather_with_grad
from llava.losses.wasserstein import wasserstein_contrastive_loss, wasserstein_similarity

__all__ = [
    "LearnableTemperature",
    "data_parallel_world",
    "gather_with_grad",
    "info_nce",
    "layerwise_contrastive_loss",
    "masked_mean_pool",
    "mixed_embedding_contrastive_loss",
    "shifted_position_ids",
    "wasserstein_contrastive_loss",
    "wasserstein_similarity",
]
