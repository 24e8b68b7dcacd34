"""Starting a stage from an earlier stage's checkpoint: projector and LoRA carried over exactly;
adapters new in this stage start fresh; mismatching LoRA or projector settings are refused by flag."""

from __future__ import annotations

import pytest
import torch

from llava.model import apply_training_mode, build_model, save_trainable
from llava.model.builder import LoraSettings
from llava.model.stage_init import init_from_checkpoint
from tests.conftest import TINY_QFORMER


def _model(base_dirs, lora: LoraSettings | None = None, projector_type: str = "qformer"):
    enc, llm = base_dirs
    config = TINY_QFORMER if projector_type == "qformer" else None
    model, _ = build_model(str(enc), str(llm), projector_type=projector_type, projector_config=config)
    apply_training_mode(model, lora_llm=lora)
    return model


def _trained(model, seed: int):
    """Stand-in for a finished stage: every trainable tensor moved off its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_stage_three_starts_from_stage_two_exactly(tiny_base_dirs, tmp_path):
    lora = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    stage2 = _trained(_model(tiny_base_dirs, lora), seed=1)
    ckpt = save_trainable(stage2, tmp_path / "stage2")
    torch.manual_seed(123)  # another initialisation than stage 2's
    stage3 = _model(tiny_base_dirs, lora)
    before = {n: p.detach().clone() for n, p in stage3.named_parameters() if p.requires_grad}
    assert init_from_checkpoint(stage3, ckpt) == []
    saved = stage2.trainable_state_dict()
    now = stage3.trainable_state_dict()
    assert now.keys() == saved.keys() and any("lora_B" in k for k in now)
    for name in now:
        assert torch.equal(now[name], saved[name]), name
        assert not torch.equal(now[name], before[name]), name  # really replaced


def test_lora_new_in_this_stage_starts_fresh(tiny_base_dirs, tmp_path):
    stage1 = _trained(_model(tiny_base_dirs), seed=2)  # projector only
    ckpt = save_trainable(stage1, tmp_path / "stage1")
    stage2 = _model(tiny_base_dirs, LoraSettings(r=4))
    fresh = init_from_checkpoint(stage2, ckpt)
    assert fresh and all("lora_" in n for n in fresh)
    assert all(torch.equal(stage2.state_dict()[k], v) for k, v in stage1.trainable_state_dict().items())
    assert all(
        torch.count_nonzero(p) == 0 for n, p in stage2.named_parameters() if "lora_B" in n
    )  # peft's init


@pytest.mark.parametrize(
    ("run_lora", "projector", "match"),
    [
        (None, "qformer", r"has llm LoRA adapters .* continue them with --lora_enable True"),
        (LoraSettings(r=2), "qformer", r"llm LoRA r is 4 in the checkpoint but 2 here \(--lora_r\)"),
        (
            LoraSettings(r=4, target_modules=["q_proj"]),
            "qformer",
            r"target_modules .* \(--lora_target_modules\)",
        ),
        (
            LoraSettings(r=4),
            "mlp",
            r"projector is 'qformer', this run's 'mlp' \(--mm_speech_projector_type\)",
        ),
    ],
)
def test_mismatching_settings_are_refused(tiny_base_dirs, tmp_path, run_lora, projector, match):
    ckpt = save_trainable(_model(tiny_base_dirs, LoraSettings(r=4)), tmp_path / "ckpt")
    with pytest.raises(ValueError, match=match):
        init_from_checkpoint(_model(tiny_base_dirs, run_lora, projector), ckpt)


def test_a_missing_checkpoint_names_the_directory(tiny_base_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: not a speech-llava checkpoint"):
        init_from_checkpoint(_model(tiny_base_dirs), tmp_path / "nowhere")
