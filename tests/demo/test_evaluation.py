import pytest
import torch

from llava.demo.evaluation import load_stage_weights
from llava.demo.phases import DivergedError
from llava.demo.variants import BUDGETS
from llava.model import LoraSettings, apply_training_mode, build_model, save_trainable

MLP = dict(stack=2)


def _lora_model(base_dirs):
    model, _ = build_model(*map(str, base_dirs), projector_type="mlp", projector_config=MLP)
    return apply_training_mode(model, lora_llm=LoraSettings(r=2, target_modules="all-linear"))


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_curve_points_load_the_adapters_of_their_step_and_none_at_step_0(tmp_path, tiny_base_dirs):
    stage1, _ = build_model(*map(str, tiny_base_dirs), projector_type="mlp", projector_config=MLP)
    save_trainable(apply_training_mode(stage1), tmp_path / "stage1")  # projector only
    tuned = _lora_model(tiny_base_dirs)
    with torch.no_grad():  # a stage-2 checkpoint whose adapters have moved away from B = 0
        for p in tuned.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_trainable(tuned, tmp_path / "stage2")
    expected2 = _trainable(tuned)

    model = _lora_model(tiny_base_dirs)
    load_stage_weights(model, tmp_path / "stage2")
    got = _trainable(model)
    assert got.keys() == expected2.keys() and any(".lora_B." in n for n in got)
    assert all(torch.equal(got[n], expected2[n]) for n in got)

    load_stage_weights(model, tmp_path / "stage1")  # step 0: the stage-1 projector, adapters off
    stage1_projector = {n: p for n, p in stage1.named_parameters() if n.startswith("projector.")}
    for n, p in model.named_parameters():
        if n.startswith("projector."):
            assert torch.equal(p, stage1_projector[n])
        elif ".lora_B." in n:
            assert not p.any()
    # With B = 0 the adapted LLM computes what the frozen one does.
    ids = torch.randint(0, 100, (2, 7))
    plain, _ = build_model(*map(str, tiny_base_dirs), projector_type="mlp", projector_config=MLP)
    with torch.no_grad():
        a = model.language_model(input_ids=ids).logits
        b = plain.language_model(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_non_finite_checkpoint_weights_are_a_divergence(tmp_path, tiny_base_dirs):
    model = _lora_model(tiny_base_dirs)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("projector.")).fill_(float("nan"))
    save_trainable(model, tmp_path / "bad")
    with pytest.raises(DivergedError, match="non-finite"):
        load_stage_weights(_lora_model(tiny_base_dirs), tmp_path / "bad")


def test_stage_2_lora_flags_from_the_budget():
    budget = BUDGETS["default"]
    assert budget.finetune_lora_flags()[:2] == ["--lora_enable", "True"]  # the study's default
    projector_only = budget.__class__(**{**budget.__dict__, "finetune_lora": {}})
    assert projector_only.finetune_lora_flags() == []  # the paper scripts' stage 2
    lora = budget.__class__(**{**budget.__dict__, "finetune_lora": {"r": 32, "target_modules": "all-linear"}})
    assert lora.finetune_lora_flags() == [
        "--lora_enable", "True", "--lora_r", "32", "--lora_target_modules", "all-linear",
    ]  # fmt: skip
    bad = budget.__class__(**{**budget.__dict__, "finetune_lora": {"rank": 4}})
    with pytest.raises(ValueError, match=r"\['rank'\] are not LoRA settings"):
        bad.finetune_lora_flags()
