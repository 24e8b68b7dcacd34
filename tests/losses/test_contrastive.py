import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llava.losses.contrastive import (
    LearnableTemperature,
    check_rows_nonempty,
    info_nce,
    layerwise_contrastive_loss,
    masked_mean_pool,
    mixed_embedding_contrastive_loss,
    shifted_position_ids,
)
from llava.losses.distributed import gather_with_grad


# ------------------------------------------------------------------------ independent references
def _pool_ref(hidden, mask):
    """Per row: average of the valid vectors, as Python floats."""
    out = []
    for i in range(hidden.shape[0]):
        rows = [hidden[i, t].double().tolist() for t in range(hidden.shape[1]) if mask[i, t]]
        out.append([sum(col) / len(rows) for col in zip(*rows)])
    return out


def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _info_nce_ref(text, speech, tau=0.1, symmetric=False):
    """Loop over pairs: cosines, log-softmax over each row (and column) and CE by hand."""
    n = len(text)
    sim = [[_cos(text[i], speech[j]) / tau for j in range(n)] for i in range(n)]

    def ce(matrix):
        total = 0.0
        for i in range(n):
            log_z = math.log(sum(math.exp(v) for v in matrix[i]))
            total += log_z - matrix[i][i]
        return total / n

    loss = ce(sim)
    if symmetric:
        loss = 0.5 * (loss + ce([list(col) for col in zip(*sim)]))
    return loss


def _padded(b, length, d, lengths, right=True):
    hidden = torch.randn(b, length, d)
    mask = torch.zeros(b, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        if right:
            mask[i, :n] = 1
        else:
            mask[i, length - n :] = 1
    return hidden, mask


# -------------------------------------------------------------------------------------- pooling
def test_masked_mean_pool_matches_loop():
    hidden, mask = _padded(3, 6, 4, [6, 2, 4])
    torch.testing.assert_close(
        masked_mean_pool(hidden, mask).double(), torch.tensor(_pool_ref(hidden, mask), dtype=torch.float64)
    )


def test_masked_mean_pool_ignores_padding_values():
    for right in (True, False):
        hidden, mask = _padded(3, 6, 4, [6, 2, 4], right=right)
        changed = hidden.clone()
        changed[mask == 0] = torch.randn(int((mask == 0).sum()), 4) * 1e3
        poisoned = changed.clone()
        poisoned[mask == 0] = float("nan")
        base = masked_mean_pool(hidden, mask)
        torch.testing.assert_close(masked_mean_pool(changed, mask), base)
        torch.testing.assert_close(masked_mean_pool(poisoned, mask), base)


def test_masked_mean_pool_bf16_accumulates_in_fp32():
    hidden, mask = _padded(2, 5, 3, [5, 3])
    low = hidden.bfloat16()
    out = masked_mean_pool(low, mask.bool())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.tensor(_pool_ref(low.float(), mask), dtype=torch.float64))


def test_check_rows_nonempty_names_the_empty_rows():
    check_rows_nonempty(torch.tensor([3, 1]), "x")
    with pytest.raises(ValueError, match=r"side rows \[0, 2\]"):
        check_rows_nonempty(torch.tensor([0, 4, 0]), "side")


def test_masked_mean_pool_errors():
    hidden, mask = _padded(3, 4, 2, [4, 0, 2])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        masked_mean_pool(hidden, mask)
    with pytest.raises(ValueError, match="expected hidden"):
        masked_mean_pool(hidden, mask[:, :3])


# -------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_identity_pairs_by_hand():
    eye = torch.eye(2)
    # S = [[10, 0], [0, 10]]: each row's loss is log(1 + e^-10)
    assert info_nce(eye, eye).item() == pytest.approx(math.log1p(math.exp(-10)), abs=1e-7)
    assert info_nce(eye, eye, temperature=1.0).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    # swapped speech: S = [[0, 10], [10, 0]] -> log(1 + e^10)
    assert info_nce(eye, eye.flip(0)).item() == pytest.approx(math.log1p(math.exp(10)), rel=1e-6)


def test_info_nce_is_scale_invariant():
    t, s = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(info_nce(3 * t, 0.5 * s), info_nce(t, s))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_matches_loop(symmetric, tau):
    t, s = torch.randn(5, 8), torch.randn(5, 8)
    expected = _info_nce_ref(t.double().tolist(), s.double().tolist(), tau, symmetric)
    got = info_nce(t, s, temperature=tau, symmetric=symmetric)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_rows_are_text():
    # text 0 sits between speech 0 and 1; speech 0 is close to text 0 and 1 -> the two directions differ
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    s = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, -0.3]])
    expected = _info_nce_ref(t.tolist(), s.tolist())
    reverse = _info_nce_ref(s.tolist(), t.tolist())
    assert abs(expected - reverse) > 1e-3
    assert info_nce(t, s).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_errors():
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2)
    out, offset = gather_with_grad(x)
    assert out is x and offset == 0
    t, s = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(info_nce(t, s, gather=True), info_nce(t, s))


def test_learnable_temperature():
    temp = LearnableTemperature()
    assert temp().item() == pytest.approx(0.1)
    t, s = torch.randn(4, 3), torch.randn(4, 3)
    loss = info_nce(t, s, temperature=temp())
    assert loss.item() == pytest.approx(info_nce(t, s, temperature=0.1).item(), rel=1e-6)
    loss.backward()
    assert temp.log_temperature.grad is not None and temp.log_temperature.grad != 0
    with torch.no_grad():
        temp.log_temperature.fill_(math.log(1e-4))
    assert temp().item() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        LearnableTemperature(init=2.0)


# ------------------------------------------------------------------------------------ layerwise
def _layer_batch(layers=(0, 2, 4), b=4, lt=5, ls=9, d=6):
    text_mask = _padded(b, lt, d, [5, 3, 4, 1])[1]
    speech_mask = _padded(b, ls, d, [9, 7, 2, 5])[1]
    text = {k: torch.randn(b, lt, d) for k in layers}
    speech = {k: torch.randn(b, ls, d) for k in layers}
    return text, text_mask, speech, speech_mask


@pytest.mark.parametrize("symmetric", [False, True])
def test_layerwise_matches_loop_over_layers(symmetric):
    text, tm, speech, sm = _layer_batch()
    for v in speech.values():
        v.requires_grad_()
    weights = {2: 0.5, 4: 2.0}
    total, per_layer = layerwise_contrastive_loss(
        text, tm, speech, sm, temperature=0.2, symmetric=symmetric, layer_weights=weights
    )
    expected_total = 0.0
    for k in (0, 2, 4):
        ref = _info_nce_ref(_pool_ref(text[k], tm), _pool_ref(speech[k], sm), 0.2, symmetric)
        assert per_layer[k].item() == pytest.approx(ref, rel=1e-5)
        assert per_layer[k].requires_grad  # each term keeps its gradient: a caller may weigh it itself
        expected_total += weights.get(k, 1.0) * ref
    assert sorted(per_layer) == [0, 2, 4]
    assert total.item() == pytest.approx(expected_total, rel=1e-5)
    torch.testing.assert_close(total, sum(weights.get(k, 1.0) * v for k, v in per_layer.items()))


def test_layerwise_default_weights_sum_layers():
    text, tm, speech, sm = _layer_batch()
    total, per_layer = layerwise_contrastive_loss(text, tm, speech, sm)
    assert total.item() == pytest.approx(sum(v.item() for v in per_layer.values()), rel=1e-6)


def test_layerwise_ignores_padding_values():
    text, tm, speech, sm = _layer_batch()
    base, _ = layerwise_contrastive_loss(text, tm, speech, sm)
    for k in speech:
        speech[k][sm == 0] = 1e4
        text[k][tm == 0] = -1e4
    changed, _ = layerwise_contrastive_loss(text, tm, speech, sm)
    torch.testing.assert_close(changed, base)


def test_gradient_reaches_speech_only_when_text_is_computed_without_grad():
    proj = torch.nn.Linear(6, 6)  # stands in for the projector
    frozen = torch.nn.Linear(6, 6)  # stands in for the frozen LLM
    text, tm, speech_in, sm = _layer_batch(layers=(0,))
    text_input = text[0].requires_grad_()
    with torch.no_grad():  # the caller's job, as the trainer does for the text pass
        text_hidden = {0: frozen(text_input)}
    speech_hidden = {0: frozen(proj(speech_in[0]))}
    total, _ = layerwise_contrastive_loss(text_hidden, tm, speech_hidden, sm)
    total.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert text_input.grad is None
    # padded speech positions receive no gradient
    leaf = speech_in[0].clone().requires_grad_()
    total, _ = layerwise_contrastive_loss(text_hidden, tm, {0: leaf}, sm)
    total.backward()
    assert leaf.grad[sm == 0].abs().sum() == 0
    assert leaf.grad[sm == 1].abs().sum() > 0


def test_layerwise_errors():
    text, tm, speech, sm = _layer_batch()
    with pytest.raises(ValueError, match="different layers"):
        layerwise_contrastive_loss(text, tm, {0: speech[0]}, sm)
    with pytest.raises(ValueError, match=r"\[7\]"):
        layerwise_contrastive_loss(text, tm, speech, sm, layer_weights={7: 1.0})
    with pytest.raises(ValueError, match="no layers"):
        layerwise_contrastive_loss({}, tm, {}, sm)
    with pytest.raises(ValueError, match="batches differ"):
        layerwise_contrastive_loss({0: text[0]}, tm, {0: speech[0][:3]}, sm[:3])


def test_mixed_embedding_loss_is_layer0_infonce():
    text, tm, mixed, mm = _layer_batch(layers=(0,))
    got = mixed_embedding_contrastive_loss(text[0], tm, mixed[0], mm, temperature=0.3, symmetric=True)
    expected = _info_nce_ref(_pool_ref(text[0], tm), _pool_ref(mixed[0], mm), 0.3, symmetric=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    total, _ = layerwise_contrastive_loss(text, tm, mixed, mm, temperature=0.3, symmetric=True)
    torch.testing.assert_close(got, total)


# ------------------------------------------------------------------------------- position shift
def test_shifted_position_ids_by_hand():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert shifted_position_ids(right, 10).tolist() == [[10, 11, 12, 10, 10], [10, 11, 12, 13, 14]]
    left = torch.tensor([[0, 0, 1, 1, 1]]).bool()
    assert shifted_position_ids(left, 0).tolist() == [[0, 0, 0, 1, 2]]
    with pytest.raises(ValueError):
        shifted_position_ids(torch.ones(3), 0)


# ----------------------------------------------------------------------- data-parallel negatives
_SIZES = (3, 2)  # uneven local batches, as with a short last batch
_D = 6


def _global_data():
    gen = torch.Generator().manual_seed(11)
    n = sum(_SIZES)
    pooled_text = torch.randn(n, _D, generator=gen)
    pooled_speech = torch.randn(n, _D, generator=gen)
    text_hidden = {k: torch.randn(n, 4, _D, generator=gen) for k in (0, 3)}
    speech_hidden = {k: torch.randn(n, 7, _D, generator=gen) for k in (0, 3)}
    text_mask = torch.ones(n, 4, dtype=torch.long)
    text_mask[1, 2:] = 0
    speech_mask = torch.ones(n, 7, dtype=torch.long)
    speech_mask[3, 4:] = 0
    return pooled_text, pooled_speech, text_hidden, text_mask, speech_hidden, speech_mask


def _losses(pooled_text, pooled_speech, text_hidden, text_mask, speech_hidden, speech_mask, gather):
    a = info_nce(pooled_text, pooled_speech, temperature=0.2, symmetric=True, gather=gather)
    b, _ = layerwise_contrastive_loss(
        text_hidden, text_mask, speech_hidden, speech_mask, gather=gather, layer_weights={3: 0.5}
    )
    return a, b


def _leaves(data):
    pooled_text, pooled_speech, text_hidden, text_mask, speech_hidden, speech_mask = data
    leaves = [pooled_text, pooled_speech, *text_hidden.values(), *speech_hidden.values()]
    for x in leaves:
        x.requires_grad_()
    return leaves


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        start = sum(_SIZES[:rank])
        stop = start + _SIZES[rank]
        pt, ps, th, tm, sh, sm = _global_data()
        local = (
            pt[start:stop],
            ps[start:stop],
            {k: v[start:stop] for k, v in th.items()},
            tm[start:stop],
            {k: v[start:stop] for k, v in sh.items()},
            sm[start:stop],
        )
        leaves = _leaves(local)
        a, b = _losses(*local, gather=True)
        (a + b).backward()
        torch.save(
            {"info_nce": a.detach(), "layerwise": b.detach(), "grads": [x.grad for x in leaves]},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_across_two_ranks_matches_one_process(tmp_path):
    world = len(_SIZES)
    mp.spawn(_gather_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)

    data = _global_data()
    leaves = _leaves(data)
    a, b = _losses(*data, gather=False)
    (a + b).backward()
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # every rank computes the loss over the global batch
        torch.testing.assert_close(out["info_nce"], a.detach())
        torch.testing.assert_close(out["layerwise"], b.detach())
        # local gradients are world_size x the one-process slice (the gather's backward sums over
        # ranks); data-parallel averaging over ranks then restores the one-process gradient
        start = sum(_SIZES[:rank])
        stop = start + _SIZES[rank]
        for got, leaf in zip(out["grads"], leaves):
            torch.testing.assert_close(got, world * leaf.grad[start:stop])
