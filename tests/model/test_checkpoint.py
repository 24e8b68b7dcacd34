"""Checkpoints of trainable weights: round trips, contents, LoRA, mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from llava.model import LoraSettings, apply_training_mode, build_model, load_pretrained_model, save_trainable
from llava.model.builder import count_parameters, load_projector
from tests.conftest import TINY_QFORMER, tiny_llm_config
from tests.helpers import speech_batch


def _trained_model(enc_dir, llm_dir, lora=None):
    model, tok = build_model(str(enc_dir), str(llm_dir), projector_config=TINY_QFORMER)
    apply_training_mode(model, lora_llm=lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**speech_batch(model, tok, [12000, 8000])).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


def _logits(model, tok):
    torch.manual_seed(3)
    batch = speech_batch(model, tok, [12000, 8000])
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits


def test_save_load_gives_identical_logits_and_only_trainable_tensors(tmp_path, tiny_base_dirs):
    enc_dir, llm_dir = tiny_base_dirs
    model, tok = _trained_model(enc_dir, llm_dir)
    ckpt = save_trainable(model, tmp_path / "any name at all")
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(k.startswith("projector.") for k in keys)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["audio_encoder_name_or_path"] == str(enc_dir) and config["llm_name_or_path"] == str(llm_dir)

    loaded, tok2 = load_pretrained_model(ckpt)
    assert not loaded.training
    assert count_parameters(loaded)["trainable"] == 0
    torch.testing.assert_close(_logits(loaded, tok2), _logits(model, tok), rtol=0, atol=0)


def test_checkpoint_is_small_next_to_the_full_model(tmp_path, tiny_base_dirs):
    model, _ = _trained_model(*tiny_base_dirs)
    ckpt = save_trainable(model, tmp_path / "c")
    counts = count_parameters(model)
    saved = sum(p.numel() for p in model.trainable_state_dict().values())
    assert saved == counts["trainable"] < counts["total"]
    assert (ckpt / "model.safetensors").stat().st_size < 4 * counts["total"]


def test_lora_round_trip(tmp_path, tiny_base_dirs):
    enc_dir, llm_dir = tiny_base_dirs
    model, tok = _trained_model(enc_dir, llm_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    keys = set(model.trainable_state_dict())
    assert any("lora_A" in k for k in keys) and any(k.startswith("projector.") for k in keys)
    # LoRA B starts at zero; after two steps the adapters must hold a real update.
    assert any(v.abs().sum() > 0 for k, v in model.trainable_state_dict().items() if "lora_B" in k)
    ckpt = save_trainable(model, tmp_path / "lora")
    loaded, tok2 = load_pretrained_model(ckpt)
    assert json.loads((ckpt / "config.json").read_text())["lora"]["llm"]["r"] == 4
    torch.testing.assert_close(_logits(loaded, tok2), _logits(model, tok), rtol=0, atol=0)


def test_base_paths_overridable_at_load_time(tmp_path, tiny_base_dirs):
    import shutil

    enc_dir, llm_dir = tiny_base_dirs
    model, tok = _trained_model(enc_dir, llm_dir)
    ckpt = save_trainable(model, tmp_path / "c")
    moved = tmp_path / "moved_llm"
    shutil.copytree(llm_dir, moved)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["llm_name_or_path"] = "/nowhere/llm"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    loaded, tok2 = load_pretrained_model(ckpt, llm=str(moved))
    torch.testing.assert_close(_logits(loaded, tok2), _logits(model, tok), rtol=0, atol=0)


def test_checkpoint_from_another_llm_is_rejected(tmp_path, tiny_base_dirs, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    enc_dir, llm_dir = tiny_base_dirs
    model, _ = _trained_model(enc_dir, llm_dir)
    ckpt = save_trainable(model, tmp_path / "c")
    other = dict(tiny_llm_config(), hidden_size=48, intermediate_size=96)
    other_dir = tmp_path / "other_llm"
    AutoModelForCausalLM.from_config(AutoConfig.for_model(other.pop("model_type"), **other)).save_pretrained(
        other_dir
    )
    tiny_tokenizer.save_pretrained(other_dir)
    with pytest.raises(ValueError, match="hidden size 64"):
        load_pretrained_model(ckpt, llm=str(other_dir))
    # Same check at the tensor level when the config does not reveal it (stage-1 projector reuse).
    other_model, _ = build_model(str(enc_dir), str(other_dir), projector_config=TINY_QFORMER)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_projector(other_model, ckpt)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a speech-llava checkpoint"):
        load_pretrained_model(tmp_path)


def _saved(tmp_path, base_dirs, lora=None):
    model, _ = build_model(*map(str, base_dirs), projector_config=TINY_QFORMER)
    apply_training_mode(model, lora_llm=lora)
    return model, save_trainable(model, tmp_path / "c")


def _rewrite_weights(ckpt, edit):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(ckpt / "model.safetensors"))
    edit(weights)
    save_file(weights, str(ckpt / "model.safetensors"))
    return weights


def test_missing_tensors_are_an_error_listing_them(tmp_path, tiny_base_dirs):
    _, ckpt = _saved(tmp_path, tiny_base_dirs, lora=LoraSettings(r=2, alpha=4, dropout=0.0))
    dropped = []

    def drop(w):
        dropped.extend(sorted(k for k in w if "lora_B" in k or k.endswith("proj.bias"))[:3])
        for k in dropped:
            del w[k]

    _rewrite_weights(ckpt, drop)
    assert dropped
    with pytest.raises(ValueError, match="lacks 3 of") as err:
        load_pretrained_model(ckpt)
    assert all(k in str(err.value) for k in dropped) and str(ckpt) in str(err.value)


def test_load_into_reports_missing_only_when_allowed(tmp_path, tiny_model):
    from llava.model.checkpoint import load_into

    model, _ = tiny_model
    state = {k: v.clone() + 1.0 for k, v in model.trainable_state_dict().items()}
    left_out = sorted(state)[:2]
    partial = {k: v for k, v in state.items() if k not in left_out}
    before = {k: model.trainable_state_dict()[k].clone() for k in left_out}
    with pytest.raises(ValueError, match="lacks 2 of"):
        load_into(model, partial, source="ck")
    assert load_into(model, partial, source="ck", allow_missing=True) == left_out
    now = model.trainable_state_dict()
    assert all(torch.equal(now[k], before[k]) for k in left_out)  # left as they were
    assert all(torch.equal(now[k], partial[k]) for k in partial)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_an_error(tmp_path, tiny_base_dirs, bad):
    _, ckpt = _saved(tmp_path, tiny_base_dirs)
    name = []

    def poison(w):
        name.append(sorted(w)[0])
        w[name[0]].view(-1)[0] = bad

    _rewrite_weights(ckpt, poison)
    with pytest.raises(ValueError, match="non-finite") as err:
        load_pretrained_model(ckpt)
    assert name[0] in str(err.value)


def test_malformed_config_json_names_the_file(tmp_path, tiny_base_dirs):
    _, ckpt = _saved(tmp_path, tiny_base_dirs)
    cfg = ckpt / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_pretrained_model(ckpt)
    cfg.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object"):
        load_pretrained_model(ckpt)
    data = json.loads(text)
    data["projector_config"] = [1, 2]
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json: invalid checkpoint config"):
        load_pretrained_model(ckpt)


def test_out_of_range_encoder_layer_in_a_checkpoint_is_a_clear_error(tmp_path, tiny_base_dirs):
    _, ckpt = _saved(tmp_path, tiny_base_dirs)
    data = json.loads((ckpt / "config.json").read_text())
    data["encoder_layer"] = 7  # the tiny encoder has 2 layers: valid -3..2
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json encoder_layer = 7 is out of range.*-3\.\.2"):
        load_pretrained_model(ckpt)
