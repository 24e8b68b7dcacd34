import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from llava.losses.wasserstein import wasserstein_contrastive_loss, wasserstein_similarity


def _batch(b=3, lt=5, ls=8, d=4, text_lengths=(5, 2, 4), speech_lengths=(8, 6, 3)):
    text = torch.randn(b, lt, d)
    speech = torch.randn(b, ls, d)
    tm = torch.zeros(b, lt, dtype=torch.long)
    sm = torch.zeros(b, ls, dtype=torch.long)
    for i, n in enumerate(text_lengths):
        tm[i, :n] = 1
    for i, n in enumerate(speech_lengths):
        sm[i, :n] = 1
    return text, tm, speech, sm


def _sinkhorn_divergence_ref(x, y, eps, iters=1000):
    """Converged debiased Sinkhorn divergence in float64 (uniform weights, cost |x - y|^2 / 2)."""

    def ot(u, v):
        a = torch.full((u.shape[0],), 1.0 / u.shape[0], dtype=torch.float64)
        b = torch.full((v.shape[0],), 1.0 / v.shape[0], dtype=torch.float64)
        cost = ((u[:, None] - v[None]) ** 2).sum(-1) / 2
        f, g = torch.zeros_like(a), torch.zeros_like(b)
        for _ in range(iters):
            f = -eps * torch.logsumexp(b.log()[None] + (g[None] - cost) / eps, dim=1)
            g = -eps * torch.logsumexp(a.log()[:, None] + (f[:, None] - cost) / eps, dim=0)
        return (a * f).sum() + (b * g).sum()

    x = F.normalize(x.double(), dim=-1)
    y = F.normalize(y.double(), dim=-1)
    return (ot(x, y) - 0.5 * ot(x, x) - 0.5 * ot(y, y)).item()


def test_missing_geomloss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "geomloss", None)  # makes `import geomloss` fail
    text, tm, speech, sm = _batch()
    with pytest.raises(ImportError, match=r"pip install speech-llava\[wasserstein\]"):
        wasserstein_contrastive_loss(text, tm, speech, sm)


needs_geomloss = pytest.mark.skipif(
    importlib.util.find_spec("geomloss") is None,
    reason="optional extra: pip install speech-llava[wasserstein]",
)


def _pair_loop(text, tm, speech, sm, **kw):
    """Per-pair geomloss calls on the unpadded, normalised token sets (the same settings)."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=0.05, diameter=2.0, backend="tensorized", **kw)
    b = text.shape[0]
    sim = torch.empty(b, b, dtype=torch.float64)
    for i in range(b):
        x = F.normalize(text[i, tm[i].bool()], dim=-1)
        for j in range(b):
            y = F.normalize(speech[j, sm[j].bool()], dim=-1)
            sim[i, j] = -loss(x, y).item()
    return sim


@needs_geomloss
def test_batched_pairs_match_per_pair_loop():
    text, tm, speech, sm = _batch()
    sim = wasserstein_similarity(text, tm, speech, sm)
    assert sim.shape == (3, 3) and sim.dtype == torch.float32
    torch.testing.assert_close(sim.double(), _pair_loop(text, tm, speech, sm), rtol=1e-4, atol=1e-5)
    for rows in (2, 3):
        torch.testing.assert_close(
            wasserstein_similarity(text, tm, speech, sm, text_rows_per_call=rows), sim, rtol=1e-5, atol=1e-6
        )


@needs_geomloss
def test_matches_converged_sinkhorn_reference():
    text, tm, speech, sm = _batch(b=2, text_lengths=(5, 3), speech_lengths=(6, 8))
    # a slow annealing runs geomloss close to convergence; its default (0.5) stops earlier
    sim = wasserstein_similarity(text, tm, speech, sm, scaling=0.995)
    for i in range(2):
        for j in range(2):
            ref = _sinkhorn_divergence_ref(text[i, tm[i].bool()], speech[j, sm[j].bool()], eps=0.05**2)
            assert -sim[i, j].item() == pytest.approx(ref, rel=2e-3, abs=1e-4)


@needs_geomloss
def test_divergence_of_a_set_with_itself_is_zero_and_symmetric():
    text, tm, _, _ = _batch()
    sim = wasserstein_similarity(text, tm, text, tm)
    torch.testing.assert_close(sim.diagonal(), torch.zeros(3), atol=1e-5, rtol=0)
    assert (sim.fill_diagonal_(-1.0) < 0).all()  # distinct sets are apart
    a, am, b, bm = _batch()
    torch.testing.assert_close(
        wasserstein_similarity(a, am, b, bm), wasserstein_similarity(b, bm, a, am).T, rtol=1e-4, atol=1e-5
    )


@needs_geomloss
def test_scale_and_padding_invariance():
    text, tm, speech, sm = _batch()
    base = wasserstein_similarity(text, tm, speech, sm)
    changed = speech.clone() * 7.0  # tokens are normalised
    changed[sm == 0] = float("nan")
    text2 = text.clone()
    text2[tm == 0] = 1e4
    torch.testing.assert_close(wasserstein_similarity(text2, tm, changed, sm), base, rtol=1e-5, atol=1e-6)


@needs_geomloss
@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_is_cross_entropy_over_pairs(symmetric):
    text, tm, speech, sm = _batch()
    tau = 0.1
    sim = _pair_loop(text, tm, speech, sm).tolist()
    n = len(sim)

    def ce(matrix):
        total = 0.0
        for i in range(n):
            row = [v / tau for v in matrix[i]]
            total += math.log(sum(math.exp(v) for v in row)) - row[i]
        return total / n

    expected = ce(sim)
    if symmetric:
        expected = 0.5 * (expected + ce([list(c) for c in zip(*sim)]))
    got = wasserstein_contrastive_loss(text, tm, speech, sm, temperature=tau, symmetric=symmetric)
    assert got.item() == pytest.approx(expected, rel=1e-4)


@needs_geomloss
def test_gradient_reaches_speech_only():
    text, tm, speech, sm = _batch()
    speech.requires_grad_()
    loss = wasserstein_contrastive_loss(text, tm, speech, sm)
    loss.backward()
    assert torch.isfinite(speech.grad).all()
    assert speech.grad[sm == 1].abs().sum() > 0
    assert speech.grad[sm == 0].abs().sum() == 0


def test_errors():
    text, tm, speech, sm = _batch()
    with pytest.raises(ValueError, match="at least 2"):
        wasserstein_contrastive_loss(text[:1], tm[:1], speech[:1], sm[:1])
    tm_empty = tm.clone()
    tm_empty[1] = 0
    with pytest.raises(ValueError, match=r"text rows \[1\]"):
        wasserstein_similarity(text, tm_empty, speech, sm)
    with pytest.raises(ValueError, match="share B and D"):
        wasserstein_similarity(text, tm, speech[:2], sm[:2])
    with pytest.raises(ValueError, match="speech_mask"):
        wasserstein_similarity(text, tm, speech, sm[:, :3])
