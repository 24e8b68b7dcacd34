"""Speech/text alignment diagnostics on pooled representations, per LLM layer.

For N utterances, ``text[i]`` and ``speech[i]`` are the pooled (e.g. mean over non-padded
positions) representations of utterance i's transcript and audio at one layer. Everything is
computed on L2-normalised vectors in float64, with ``S = text @ speech.T`` (rows = text, as in
the contrastive loss):

- ``cos_matched``: mean of the diagonal of S (pairs that belong together);
- ``cos_mismatched``: mean of its off-diagonal entries;
- ``cos_gap``: their difference (what contrastive pretraining should widen);
- ``r1_speech2text`` / ``r1_text2speech``: fraction of speech (text) queries whose own text
  (speech) is the most similar candidate; ``r5_*`` likewise for the top 5 when N >= 5.

Ties count against the query: the correct candidate's rank is 1 + the number of *other*
candidates at least as similar (within ``TIE_TOLERANCE``). Collapsed representations (all pooled
vectors alike, a common failure) thus score R@1 = 0 rather than a lucky 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from llava.fileio import atomic_path

__all__ = [
    "TIE_TOLERANCE",
    "AlignmentAccumulator",
    "alignment_metrics",
    "plot_layerwise",
]

# Similarities are cosines in float64; differences below this are rounding, not ranking.
TIE_TOLERANCE = 1e-10
# Rows of the similarity matrix computed at once: bounds memory to ~chunk * N float64 values.
_CHUNK_ROWS = 1024


def _normalise(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a [N, D] tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return torch.nn.functional.normalize(x, dim=-1)


def _ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best, ties pessimistic) of candidate i for query i.  # queries, candidates: [N, D]"""
    n = queries.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        sims = queries[start:stop] @ candidates.T  # [c, N]
        rows = torch.arange(stop - start)
        own = sims[rows, torch.arange(start, stop)]  # [c]
        # The correct candidate is read from the same row it is compared with, so rounding
        # cannot split an exact tie; it is then excluded from its own count.
        at_least = (sims >= own[:, None] - TIE_TOLERANCE).sum(dim=1) - 1
        ranks[start:stop] = 1 + at_least
    return ranks


def alignment_metrics(text: torch.Tensor, speech: torch.Tensor) -> dict[str, float]:
    """Cosine and retrieval statistics of matched text/speech pairs.

    Args:
        text: pooled text representations  # [N, D]
        speech: pooled speech representations, row i paired with ``text[i]``  # [N, D]

    Returns a dict with ``num_pairs``, ``cos_matched``, ``cos_mismatched``, ``cos_gap``,
    ``r1_speech2text``, ``r1_text2speech`` and, when N >= 5, ``r5_speech2text``,
    ``r5_text2speech`` (fractions in [0, 1]). Needs N >= 2.
    """
    t = _normalise(text, "text")
    s = _normalise(speech, "speech")
    if t.shape != s.shape:
        raise ValueError(f"text {tuple(t.shape)} and speech {tuple(s.shape)} shapes differ")
    n = t.shape[0]
    if n < 2:
        raise ValueError(f"alignment needs at least 2 pairs (mismatched pairs), got {n}")

    matched = (t * s).sum(dim=-1)  # [N]
    # Sum of all entries of S without building it: (sum_i t_i) . (sum_j s_j).
    total = t.sum(dim=0) @ s.sum(dim=0)
    cos_matched = matched.mean().item()
    cos_mismatched = ((total - matched.sum()) / (n * (n - 1))).item()

    ranks_s2t = _ranks(s, t)
    ranks_t2s = _ranks(t, s)
    out = {
        "num_pairs": n,
        "cos_matched": cos_matched,
        "cos_mismatched": cos_mismatched,
        "cos_gap": cos_matched - cos_mismatched,
        "r1_speech2text": (ranks_s2t <= 1).double().mean().item(),
        "r1_text2speech": (ranks_t2s <= 1).double().mean().item(),
    }
    if n >= 5:
        out["r5_speech2text"] = (ranks_s2t <= 5).double().mean().item()
        out["r5_text2speech"] = (ranks_t2s <= 5).double().mean().item()
    return out


class AlignmentAccumulator:
    """Collects pooled vectors batch by batch (on CPU, fp32), so no hidden states are kept.

    Usage::

        acc = AlignmentAccumulator()
        for batch in loader:
            acc.add({l: text_pool[l] for l in layers}, {l: speech_pool[l] for l in layers})
        results = acc.compute()  # {layer: alignment_metrics(...)}
    """

    def __init__(self) -> None:
        self._text: dict[int, list[torch.Tensor]] = {}
        self._speech: dict[int, list[torch.Tensor]] = {}

    @property
    def layers(self) -> list[int]:
        return sorted(self._text)

    def __len__(self) -> int:
        """Number of pairs collected so far."""
        if not self._text:
            return 0
        return sum(x.shape[0] for x in next(iter(self._text.values())))

    def add(
        self, layer_to_text: Mapping[int, torch.Tensor], layer_to_speech: Mapping[int, torch.Tensor]
    ) -> None:
        """Add one batch: ``{layer: [B, D]}`` for text and speech, the same layers and B."""
        layers = set(layer_to_text)
        if layers != set(layer_to_speech):
            raise ValueError(
                f"text layers {sorted(layer_to_text)} and speech layers {sorted(layer_to_speech)} differ"
            )
        if not layers:
            raise ValueError("add() got no layers")
        if self._text and layers != set(self._text):
            raise ValueError(f"batch has layers {sorted(layers)}, earlier batches had {self.layers}")
        for layer in layers:
            for x in (layer_to_text[layer], layer_to_speech[layer]):
                if x.dim() != 2:
                    raise ValueError(f"layer {layer}: expected [B, D] pooled vectors, got {tuple(x.shape)}")
        sizes = {x.shape[0] for x in (*layer_to_text.values(), *layer_to_speech.values())}
        if len(sizes) != 1:
            raise ValueError(f"batch sizes differ across layers/modalities: {sorted(sizes)}")
        for layer in layers:
            for store, x in ((self._text, layer_to_text[layer]), (self._speech, layer_to_speech[layer])):
                store.setdefault(int(layer), []).append(x.detach().to(device="cpu", dtype=torch.float32))

    def reset(self) -> None:
        self._text.clear()
        self._speech.clear()

    def compute(self) -> dict[int, dict[str, float]]:
        """``alignment_metrics`` of every layer over everything added so far, keyed by layer, ascending."""
        if not self._text:
            raise ValueError("AlignmentAccumulator.compute(): nothing was added")
        return {
            layer: alignment_metrics(torch.cat(self._text[layer]), torch.cat(self._speech[layer]))
            for layer in self.layers
        }


def plot_layerwise(results: Mapping[int, Mapping[str, float]], path: str | os.PathLike) -> None:
    """Plot R@1 (both directions) and matched/mismatched cosine with their gap against the layer.

    ``results`` is what ``AlignmentAccumulator.compute`` returns. The image format follows the suffix of
    ``path`` (e.g. ``.png``); the file is written atomically.
    """
    # Figure without pyplot uses the Agg canvas and leaves the global backend alone.
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_layerwise: no layers to plot")
    layers = sorted(results)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_r, ax_c = fig.subplots(1, 2)
    for key, label in (("r1_speech2text", "speech→text"), ("r1_text2speech", "text→speech")):
        ax_r.plot(layers, [results[layer][key] for layer in layers], marker="o", label=label)
    ax_r.set(xlabel="LLM layer", ylabel="R@1", title="Retrieval R@1", ylim=(-0.02, 1.02))
    ax_r.legend()
    for key, label in (("cos_matched", "matched"), ("cos_mismatched", "mismatched"), ("cos_gap", "gap")):
        ax_c.plot(layers, [results[layer][key] for layer in layers], marker="o", label=label)
    ax_c.set(xlabel="LLM layer", ylabel="cosine", title="Cosine similarity")
    ax_c.legend()
    for ax in (ax_r, ax_c):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
