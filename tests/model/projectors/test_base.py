"""The projector contract: folding frames into windows, matching the LLM's embedding scale."""

from __future__ import annotations

import pytest
import torch

from llava.model.projectors import PROJECTORS, build_projector
from llava.model.projectors.base import Projector

SMALL = {"qformer": {"num_layers": 1, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}}


def test_fold_pads_to_a_multiple_and_groups_consecutive_frames():
    feats = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # [B, T, D]
    mask = torch.arange(7)[None] < torch.tensor([[7], [4]])
    folded, fmask = Projector.fold(feats, mask, 3)
    assert folded.shape == (2, 3, 3, 3) and fmask.shape == (2, 3, 3)
    for b in range(2):
        for t in range(9):  # frame t lands in window t // 3, slot t % 3; the two padding frames are zero
            want = feats[b, t] if t < 7 else torch.zeros(3)
            assert torch.equal(folded[b, t // 3, t % 3], want)
            assert bool(fmask[b, t // 3, t % 3]) == (t < 7 and bool(mask[b, t]))
    same, same_mask = Projector.fold(feats[:, :6], mask[:, :6], 3)  # already a multiple: a view, no padding
    assert same.shape == (2, 2, 3, 3) and torch.equal(same.reshape(2, 6, 3), feats[:, :6])
    assert torch.equal(same_mask.reshape(2, 6), mask[:, :6])


def test_a_projector_must_say_how_long_its_output_is():
    class NoLengths(Projector):
        def forward(self, feats, mask):
            return feats, mask

    with pytest.raises(TypeError, match="output_lengths"):
        NoLengths()


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_match_input_embeddings_sets_the_target_once(name):
    table = torch.full((10, 16), 0.5)  # every row has norm 0.5 * sqrt(16) = 2
    small = SMALL.get(name, {})
    plain = build_projector(name, small, encoder_dim=8, llm_dim=16, frame_rate=50.0)
    assert plain.match_input_embeddings(table) is None  # no output norm asked for
    scaled = build_projector(
        name, {**small, "output_norm": "rms_match"}, encoder_dim=8, llm_dim=16, frame_rate=50.0
    )
    assert scaled.match_input_embeddings(table) == pytest.approx(2.0)
    assert scaled.match_input_embeddings(table * 10) == pytest.approx(2.0)  # measured once, then kept
    given = build_projector(
        name,
        {"output_norm": "rms_match", "output_norm_target": 0.7},
        encoder_dim=8,
        llm_dim=16,
        frame_rate=50.0,
    )
    assert given.match_input_embeddings(table) == pytest.approx(0.7)  # an explicit target wins
