"""The window-level Q-Former: windows x queries outputs, windows read independently, padding zeroed."""

from __future__ import annotations

import pytest
import torch

from llava.model.projectors import build_projector
from llava.model.projectors.qformer import QFormerProjector, QFormerSettings

SMALL = dict(num_queries=3, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)


def _projector(**changes) -> QFormerProjector:
    torch.manual_seed(0)
    return build_projector("qformer", {**SMALL, **changes}, encoder_dim=8, llm_dim=16, frame_rate=50.0).eval()


def test_output_length_is_windows_times_queries():
    proj = _projector()
    assert proj.window == 17  # round(50 Hz * 0.333 s)
    feats = torch.randn(3, 40, 8)
    lengths = torch.tensor([40, 17, 18])
    mask = torch.arange(40)[None] < lengths[:, None]
    with torch.no_grad():
        embeds, out_mask = proj(feats, mask)
    windows = -(-lengths // 17)  # ceil: 3, 1, 2
    assert embeds.shape == (3, 3 * 3, 16)
    assert out_mask.sum(1).tolist() == (windows * 3).tolist() == proj.output_lengths(lengths).tolist()
    assert not embeds[~out_mask].any()  # outputs of padding windows are exactly zero


def test_windows_are_read_independently_and_padding_does_not_leak():
    proj = _projector(window_seconds=0.1)  # 5-frame windows
    feats = torch.randn(1, 15, 8)
    mask = torch.ones(1, 15, dtype=torch.bool)
    with torch.no_grad():
        base, _ = proj(feats, mask)
        changed = feats.clone()
        changed[0, 10:] = torch.randn(5, 8)  # the third window only
        other, _ = proj(changed, mask)
        # the same utterance padded with garbage frames beyond its length
        padded = torch.cat([feats, torch.randn(1, 7, 8) * 100], dim=1)
        with_pad, pad_mask = proj(padded, torch.arange(22)[None] < 15)
    q = SMALL["num_queries"]
    torch.testing.assert_close(other[0, : 2 * q], base[0, : 2 * q])  # windows 1-2 unchanged
    assert not torch.allclose(other[0, 2 * q :], base[0, 2 * q :])
    assert pad_mask.sum() == 3 * q
    torch.testing.assert_close(with_pad[0, : 3 * q], base[0], rtol=1e-5, atol=1e-6)


def test_paper_settings_parameter_count():
    settings = QFormerSettings()
    assert (settings.num_queries, settings.num_layers, settings.hidden_size, settings.num_heads) == (
        4,
        4,
        768,
        12,
    )
    proj = build_projector("qformer", {}, encoder_dim=1024, llm_dim=4096, frame_rate=50.0)
    n = sum(p.numel() for p in proj.parameters())
    assert 42.0e6 < n < 43.0e6, n


def test_input_layer_norm_is_optional():
    assert isinstance(_projector().input_norm, torch.nn.LayerNorm)
    assert isinstance(_projector(layer_norm_input=False).input_norm, torch.nn.Identity)


def test_dropout_acts_in_training_only():
    proj = _projector(dropout=0.5)
    feats, mask = torch.randn(2, 20, 8), torch.ones(2, 20, dtype=torch.bool)
    with torch.no_grad():
        a, _ = proj.eval()(feats, mask)
        b, _ = proj(feats, mask)
        proj.train()
        c, _ = proj(feats, mask)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown qformer projector option\(s\) \['queries'\]; known: .*num_queries"
    ):
        build_projector("qformer", {"queries": 4}, encoder_dim=8, llm_dim=16, frame_rate=50.0)


@pytest.mark.parametrize("positions", [False, True])
def test_window_positions_make_frame_order_inside_a_window_visible(positions):
    # The paper's cross-attention reads frame content only: reversing the frames of a window gives the
    # same outputs. With window position embeddings the queries can tell the start from the end.
    proj = _projector(window_seconds=0.1, window_positions=positions)  # 5-frame windows
    if positions:  # as learned: initialised small (std 0.02), they grow in training
        with torch.no_grad():
            proj.window_positions.normal_()
    feats = torch.randn(1, 10, 8)
    mask = torch.ones(1, 10, dtype=torch.bool)
    flipped = feats.clone()
    flipped[0, :5] = feats[0, :5].flip(0)  # the first window, reversed
    with torch.no_grad():
        a, _ = proj(feats, mask)
        b, _ = proj(flipped, mask)
    q = SMALL["num_queries"]
    torch.testing.assert_close(a[0, q:], b[0, q:])  # the second window is untouched either way
    assert torch.allclose(a[0, :q], b[0, :q], atol=1e-5) is (not positions)
    assert (proj.window_positions is not None) is positions
    if positions:
        assert proj.window_positions.shape == (5, 8) and proj.window_positions.requires_grad
