import math

import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.losses.nwp import nwp_loss


def _reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Plain loop in float64: position t predicts label t + 1; mean over labelled tokens."""
    total, count = 0.0, 0
    b, length, _ = logits.shape
    for i in range(b):
        for t in range(length - 1):
            y = int(labels[i, t + 1])
            if y == ignore_index:
                continue
            row = [float(v) for v in logits[i, t].double()]
            log_z = math.log(sum(math.exp(v) for v in row))
            total += log_z - row[y]
            count += 1
    return total / count


def _batch(b=3, length=7, vocab=11):
    logits = torch.randn(b, length, vocab)
    labels = torch.randint(0, vocab, (b, length))
    labels[0, :4] = IGNORE_INDEX  # prompt
    labels[1, :] = IGNORE_INDEX
    labels[1, 5] = 3
    labels[2, -2:] = IGNORE_INDEX  # padding
    return logits, labels


def test_matches_loop_reference():
    logits, labels = _batch()
    assert nwp_loss(logits, labels).item() == pytest.approx(_reference(logits, labels), rel=1e-5)


def test_matches_transformers_causal_lm_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _batch()
    expected = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])
    torch.testing.assert_close(nwp_loss(logits, labels), expected)


def test_first_label_is_never_scored():
    logits, labels = _batch()
    changed = labels.clone()
    changed[:, 0] = 5  # nothing predicts position 0
    assert nwp_loss(logits, changed).item() == pytest.approx(nwp_loss(logits, labels).item())


def test_bf16_logits_give_fp32_loss():
    logits, labels = _batch(vocab=50)
    low = logits.bfloat16()
    loss = nwp_loss(low, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_reference(low.float(), labels), rel=1e-5)


def test_gradient_matches_float64_reference():
    logits, labels = _batch()
    a = logits.clone().requires_grad_()
    nwp_loss(a, labels).backward()
    b = logits.double().requires_grad_()
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    log_p = b[:, :-1].log_softmax(-1)
    picked = log_p.gather(-1, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (-(picked * keep).sum() / keep.sum()).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-7)
    assert a.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_custom_ignore_index():
    logits, labels = _batch()
    other = labels.masked_fill(labels == IGNORE_INDEX, -1)
    assert nwp_loss(logits, other, ignore_index=-1).item() == pytest.approx(
        _reference(logits, labels), rel=1e-5
    )


def test_no_labelled_token_raises():
    logits = torch.randn(2, 4, 5)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[:, 0] = 1  # the first label is shifted away
    with pytest.raises(ValueError, match="no labelled token"):
        nwp_loss(logits, labels)


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        nwp_loss(torch.randn(2, 4, 5), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        nwp_loss(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.long))
