import math

import pytest
import torch

import llava.eval.diagnostics as diag
from llava.eval.diagnostics import (
    AlignmentAccumulator,
    alignment_metrics,
    plot_layerwise,
)


def _reference(text, speech):
    """Plain-Python computation of the same statistics (pessimistic ties)."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    t = [unit(row) for row in text.double().tolist()]
    s = [unit(row) for row in speech.double().tolist()]
    n = len(t)
    sim = [[sum(a * b for a, b in zip(t[i], s[j])) for j in range(n)] for i in range(n)]
    matched = sum(sim[i][i] for i in range(n)) / n
    mismatched = sum(sim[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))

    def recall(k, by_row):
        hits = 0
        for q in range(n):
            own = sim[q][q]
            others = [sim[q][c] if by_row else sim[c][q] for c in range(n) if c != q]
            hits += 1 + sum(o >= own - 1e-10 for o in others) <= k
        return hits / n

    out = {
        "num_pairs": n,
        "cos_matched": matched,
        "cos_mismatched": mismatched,
        "cos_gap": matched - mismatched,
        "r1_speech2text": recall(1, by_row=False),
        "r1_text2speech": recall(1, by_row=True),
    }
    if n >= 5:
        out["r5_speech2text"] = recall(5, by_row=False)
        out["r5_text2speech"] = recall(5, by_row=True)
    return out


def _assert_close(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("n, d", [(2, 3), (7, 5), (12, 4)])
def test_matches_python_reference(n, d):
    text = torch.randn(n, d)
    speech = text + 1.5 * torch.randn(n, d)
    _assert_close(alignment_metrics(text, speech), _reference(text, speech))


def test_chunked_ranks_equal_one_shot(monkeypatch):
    text, speech = torch.randn(11, 6), torch.randn(11, 6)
    whole = alignment_metrics(text, speech)
    monkeypatch.setattr(diag, "_CHUNK_ROWS", 3)
    assert alignment_metrics(text, speech) == whole


def test_identical_vectors():
    x = torch.randn(6, 8)
    out = alignment_metrics(x, 3.0 * x)  # scale does not matter after L2 normalisation
    assert out["r1_speech2text"] == out["r1_text2speech"] == 1.0
    assert out["r5_speech2text"] == 1.0
    assert out["cos_matched"] == pytest.approx(1.0)
    assert out["cos_gap"] > 0


def test_permutation_known_recall():
    text = torch.randn(6, 16)
    perm = torch.tensor([0, 2, 1, 3, 5, 4])  # fixed points 0 and 3
    out = alignment_metrics(text, text[perm])
    assert out["r1_speech2text"] == pytest.approx(2 / 6)
    assert out["r1_text2speech"] == pytest.approx(2 / 6)


def test_collapsed_speech_scores_zero():
    text = torch.randn(5, 4)
    speech = torch.ones(5, 4)  # every utterance maps to the same vector: all candidates tie
    assert alignment_metrics(text, speech)["r1_text2speech"] == 0.0


def test_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        alignment_metrics(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        alignment_metrics(torch.randn(3, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        alignment_metrics(torch.full((3, 3), float("nan")), torch.randn(3, 3))
    with pytest.raises(ValueError, match="layers"):
        AlignmentAccumulator().add({0: torch.randn(3, 2)}, {1: torch.randn(3, 2)})


def test_accumulator_equals_one_shot():
    layers = (0, 5, 31)
    text = {layer: torch.randn(9, 8) for layer in layers}
    speech = {layer: torch.randn(9, 8) for layer in layers}
    acc = AlignmentAccumulator()
    for start, stop in ((0, 3), (3, 7), (7, 9)):
        acc.add(
            {layer: text[layer][start:stop] for layer in layers},
            {layer: speech[layer][start:stop].requires_grad_() for layer in layers},
        )
    assert len(acc) == 9 and acc.layers == list(layers)
    result = acc.compute()
    assert list(result) == list(layers)
    assert result == {layer: alignment_metrics(text[layer], speech[layer]) for layer in layers}

    with pytest.raises(ValueError, match="earlier batches"):
        acc.add({1: torch.randn(2, 8)}, {1: torch.randn(2, 8)})
    with pytest.raises(ValueError, match="batch sizes"):
        acc.add(
            {layer: torch.randn(2, 8) for layer in layers}, {layer: torch.randn(3, 8) for layer in layers}
        )
    acc.reset()
    with pytest.raises(ValueError, match="nothing was added"):
        acc.compute()


def test_plot_writes_png(tmp_path):
    text = {layer: torch.randn(6, 4) for layer in (0, 1, 2)}
    speech = {layer: text[layer] + 0.5 * layer * torch.randn(6, 4) for layer in (0, 1, 2)}
    path = tmp_path / "plots" / "alignment.png"
    acc = AlignmentAccumulator()
    acc.add(text, speech)
    plot_layerwise(acc.compute(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["alignment.png"]
