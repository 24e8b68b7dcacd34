"""Frame-stacking projectors (linear, mlp): k frames per position, against a direct computation."""

from __future__ import annotations

import pytest
import torch

from llava.model.projectors import build_projector
from llava.model.projectors.stacking import LinearProjector, MLPProjector, StackingProjector


def _projector(name: str, **options) -> StackingProjector:
    torch.manual_seed(0)
    return build_projector(name, {"stack": 3, **options}, encoder_dim=4, llm_dim=6, frame_rate=50.0).eval()


def _reference(proj: StackingProjector, feats: torch.Tensor, length: int, context: int = 0) -> torch.Tensor:
    """Position j: frames 3(j - c) .. 3(j + c) + 2 concatenated (frames outside 0..length-1 as zeros)."""
    rows = []
    for j in range(-(-length // 3)):
        span = range(3 * (j - context), 3 * (j + context) + 3)
        frames = [feats[t] if 0 <= t < length else torch.zeros(4) for t in span]
        rows.append(proj.net(torch.cat(frames)))
    return torch.stack(rows)


@pytest.mark.parametrize("name, cls", [("linear", LinearProjector), ("mlp", MLPProjector)])
def test_stacked_outputs_equal_a_direct_computation(name, cls):
    proj = _projector(name)
    assert isinstance(proj, cls)
    feats = torch.randn(2, 8, 4)
    lengths = torch.tensor([8, 4])
    mask = torch.arange(8)[None] < lengths[:, None]
    feats[1, 4:] = 100.0  # padding values must not reach a live position
    with torch.no_grad():
        out, out_mask = proj(feats, mask)
    assert out.shape == (2, 3, 6)
    assert out_mask.sum(1).tolist() == proj.output_lengths(lengths).tolist() == [3, 2]  # ceil(n / 3)
    with torch.no_grad():
        for b, n in enumerate(lengths.tolist()):
            k = -(-n // 3)
            torch.testing.assert_close(out[b, :k], _reference(proj, feats[b], n))


@pytest.mark.parametrize("name", ["linear", "mlp"])
@pytest.mark.parametrize("context", [1, 2])
def test_context_adds_the_neighbouring_positions_frames(name, context):
    proj = _projector(name, context=context)
    first = proj.net if name == "linear" else proj.net[0]
    assert first.in_features == 3 * (2 * context + 1) * 4
    feats = torch.randn(2, 14, 4)
    lengths = torch.tensor([14, 7])
    mask = torch.arange(14)[None] < lengths[:, None]
    feats[1, 7:] = 100.0  # padding must not reach a live position, not even as a neighbour
    with torch.no_grad():
        out, out_mask = proj(feats, mask)
        assert out_mask.sum(1).tolist() == [5, 3]  # the rate does not change
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out[b, : -(-n // 3)], _reference(proj, feats[b], n, context))


def test_mlp_hidden_width_defaults_to_the_llm_width():
    assert _projector("mlp").net[0].out_features == 6
    assert _projector("mlp", hidden_size=10).net[0].out_features == 10
    assert _projector("linear").net.in_features == 3 * 4


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_stack_must_be_positive(name, recwarn):
    with pytest.raises(ValueError, match="stack must be >= 1, got 0"):
        _projector(name, stack=0)
    assert not recwarn.list  # refused before any layer is sized by it
    with pytest.raises(ValueError, match="context must be >= 0, got -1"):
        _projector(name, context=-1)


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_dropout_acts_in_training_only_and_adds_no_weights(name):
    plain, dropped = _projector(name), _projector(name, dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints load either way
    feats, mask = torch.randn(1, 12, 4), torch.ones(1, 12, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(dropped(feats, mask)[0], plain(feats, mask)[0])  # eval: no dropout
        dropped.train()
        torch.manual_seed(1)
        out = dropped(feats, mask)[0]
    # Training: the input features of each position are zeroed at random (kept ones scaled by 2).
    torch.manual_seed(1)
    keep = torch.nn.functional.dropout(torch.ones(1, 4, 12), 0.5, training=True)
    stacked = feats.reshape(1, 4, 12) * keep
    with torch.no_grad():
        torch.testing.assert_close(out, dropped.output_norm(dropped.net(stacked)))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        _projector(name, dropout=1.0)
