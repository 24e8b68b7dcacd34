"""Wasserstein contrastive loss: InfoNCE on Sinkhorn divergences between token sets.

For every (text i, speech j) pair of a batch, D(i, j) is the debiased Sinkhorn divergence between
the L2-normalised token sets (uniform weights over the valid tokens), computed by `geomloss`
(`SamplesLoss("sinkhorn", p=2, blur=0.05)`, cost |x - y|^p / p, ε = blur^p). The similarity is
S = -D and the loss CE(S / τ, arange(B)) with rows = text, as in the cosine variant.

`geomloss` is an optional dependency (`pip install speech-llava[wasserstein]`), imported on first use.

Two settings differ from a bare `SamplesLoss` call, both so that a pair's value does not depend on
the rest of the batch (padding or other utterances):
- padded tokens are zeroed and get weight 0;
- the ε-annealing starts from `diameter = 2`, the largest distance between unit vectors, instead of
  geomloss' estimate from the bounding box of all points in the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.losses.contrastive import check_rows_nonempty

_MISSING = (
    "the Wasserstein contrastive loss needs the optional package geomloss: "
    "pip install speech-llava[wasserstein]"
)

# Unit vectors are at most 2 apart; a fixed bound keeps the annealing schedule batch-independent.
_UNIT_SPHERE_DIAMETER = 2.0


def _samples_loss(p: int, blur: float, scaling: float):
    try:
        from geomloss import SamplesLoss
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return SamplesLoss(
        "sinkhorn",
        p=p,
        blur=blur,
        scaling=scaling,
        diameter=_UNIT_SPHERE_DIAMETER,
        backend="tensorized",  # the other backends need pykeops
        debias=True,
    )


def _token_set(hidden: torch.Tensor, mask: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised points [B, T, D] (zeros at padding) and uniform weights [B, T] over valid tokens."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected {side} [B, T, D] and {side}_mask [B, T], got {tuple(hidden.shape)} and "
            f"{tuple(mask.shape)}"
        )
    valid = mask.bool()
    counts = valid.sum(dim=1)  # [B]
    check_rows_nonempty(counts, side)
    points = torch.where(valid.unsqueeze(-1), F.normalize(hidden.float(), dim=-1), 0.0)
    weights = valid.float() / counts.unsqueeze(-1).float()
    return points, weights


def wasserstein_similarity(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    speech: torch.Tensor,
    speech_mask: torch.Tensor,
    blur: float = 0.05,
    p: int = 2,
    scaling: float = 0.5,
    text_rows_per_call: int = 1,
) -> torch.Tensor:
    """S [B, B] with S[i, j] = -SinkhornDivergence(text_i, speech_j) over normalised token sets.

    Args:
        text: [B, Lt, D] hidden states; text_mask [B, Lt] nonzero on real tokens.
        speech: [B, Ls, D]; speech_mask [B, Ls].
        blur: geomloss blur (ε = blur^p).
        p: cost exponent (1 or 2).
        scaling: geomloss ε-annealing ratio (its default 0.5; closer to 1 is slower and closer to
            the converged divergence).
        text_rows_per_call: text rows scored against the whole speech batch per geomloss call; the
            call copies the speech side that many times, so raise it only when memory allows.

    Computed in fp32. Gradients flow to whichever inputs require them.
    """
    if text.shape[0] != speech.shape[0] or text.shape[-1] != speech.shape[-1]:
        raise ValueError(
            f"text {tuple(text.shape)} and speech {tuple(speech.shape)} must share B and D ([B, L, D])"
        )
    if text_rows_per_call < 1:
        raise ValueError(f"text_rows_per_call must be >= 1, got {text_rows_per_call}")
    x, a = _token_set(text, text_mask, "text")  # [B, Lt, D], [B, Lt]
    y, b = _token_set(speech, speech_mask, "speech")  # [B, Ls, D], [B, Ls]
    loss_fn = _samples_loss(p, blur, scaling)
    n = x.shape[0]
    rows = []
    for start in range(0, n, text_rows_per_call):
        c = min(text_rows_per_call, n - start)
        # pairs (i, j) for i in this chunk, j over the batch, flattened i-major: [c * B, ...]
        xi = x[start : start + c].repeat_interleave(n, dim=0)
        ai = a[start : start + c].repeat_interleave(n, dim=0)
        yj = y if c == 1 else y.repeat(c, 1, 1)
        bj = b if c == 1 else b.repeat(c, 1)
        rows.append(loss_fn(ai, xi, bj, yj).view(c, n))
    return -torch.cat(rows, dim=0)


def wasserstein_contrastive_loss(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    speech: torch.Tensor,
    speech_mask: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    blur: float = 0.05,
    p: int = 2,
    symmetric: bool = False,
    scaling: float = 0.5,
    text_rows_per_call: int = 1,
) -> torch.Tensor:
    """CE(S / τ, arange(B)) with S from `wasserstein_similarity` (rows = text); `symmetric` averages
    in the speech -> text direction. Raises ValueError for a batch of fewer than 2 pairs."""
    if text.shape[0] < 2:
        raise ValueError(
            f"a contrastive batch needs at least 2 pairs (it has {text.shape[0]}): "
            "with one pair there are no negatives"
        )
    sim = wasserstein_similarity(
        text,
        text_mask,
        speech,
        speech_mask,
        blur=blur,
        p=p,
        scaling=scaling,
        text_rows_per_call=text_rows_per_call,
    )
    logits = sim / temperature  # [B, B]
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    return loss
