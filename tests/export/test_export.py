"""`python -m llava.export`: a standalone directory that `transformers` loads and that generates the
checkpoint's own tokens; LoRA merged or kept; refused destinations and non-checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoFeatureExtractor, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
from llava.export import main as export_main
from llava.inference import generate_batch, inference_collator, load_model
from llava.model import LoraSettings, apply_training_mode, build_model, save_trainable
from llava.model.modeling import SpeechLlavaForCausalLM
from llava.model.pretrained import load_for_inference
from tests.conftest import TINY_QFORMER

PROMPT = "<audio>\nTranscribe the audio."


def _samples():
    rng = np.random.default_rng(0)
    return [
        {
            "id": f"u{i}",
            "task": "ASR",
            "audio": (0.1 * rng.standard_normal(n)).astype(np.float32),
            "prompt": PROMPT,
            "target": "",
        }
        for i, n in enumerate([16000, 7000])
    ]


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, tiny_base_dirs):
    """A checkpoint with LLM LoRA adapters whose update is not zero (so merging changes weights)."""
    enc_dir, llm_dir = tiny_base_dirs
    torch.manual_seed(0)
    model, _ = build_model(str(enc_dir), str(llm_dir), projector_config=TINY_QFORMER)
    apply_training_mode(model, lora_llm=LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
            elif name.startswith("projector."):
                p.mul_(5.0)
    ckpt = save_trainable(model, tmp_path_factory.mktemp("lora") / "ckpt")
    (ckpt / "test_asr_scores.json").write_text(
        json.dumps({"stem": "test_asr", "task": "ASR", "wer_paper": 12.5, "num_predictions": 3})
    )
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": 7, "epoch": 1.0, "log_history": [{"loss": 2.5}]})
    )
    return ckpt


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_checkpoint, lora_checkpoint):
    root = tmp_path_factory.mktemp("exports")
    export_main(
        ["--model-path", str(tiny_checkpoint), "--out", str(root / "plain"), "--max-shard-size", "100KB"]
    )
    export_main(["--model-path", str(lora_checkpoint), "--out", str(root / "lora")])
    export_main(["--model-path", str(lora_checkpoint), "--out", str(root / "merged"), "--merge-lora"])
    return root


def _generate(model, batch, max_new_tokens=12):
    keys = ("input_ids", "attention_mask", "audio_values", "audio_lengths")
    return model.generate(**{k: batch[k] for k in keys}, max_new_tokens=max_new_tokens, do_sample=False)


def test_export_directory_is_standalone(exports):
    out = exports / "plain"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "README.md"} <= names
    assert {
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded at 100KB
    assert not any(n.endswith(".tmp") or n.startswith(".") for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "speech_llava" and config["checkpoint_format"] == "full"
    assert config["audio_config"]["model_type"] == "hubert" and config["text_config"]["model_type"] == "llama"
    assert config["audio_feature_extractor"]["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert config["architectures"] == ["SpeechLlavaForCausalLM"]
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    prefixes = {k.split(".")[0] for k in index}
    assert prefixes == {"audio_tower", "projector", "language_model"}
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<audio>" in tok.get_vocab()
    assert AutoFeatureExtractor.from_pretrained(out).sampling_rate == 16000


def test_from_pretrained_generates_the_checkpoint_tokens(exports, tiny_checkpoint):
    ckpt_model, ckpt_tok = load_model(tiny_checkpoint)
    batch = inference_collator(ckpt_tok, ckpt_model)(_samples())
    model = AutoModelForCausalLM.from_pretrained(exports / "plain")
    processor = AutoProcessor.from_pretrained(exports / "plain")
    assert type(model) is SpeechLlavaForCausalLM
    messages = [{"role": "system", "content": PAPER_SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}]
    prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt, prompt], audio=[s["audio"] for s in _samples()])
    # The processor builds exactly what the inference collator builds ...
    for key in ("input_ids", "attention_mask", "audio_values", "audio_lengths"):
        assert torch.equal(inputs[key], batch[key]), key
    # ... and the export generates the checkpoint's tokens.
    want = _generate(ckpt_model, batch)
    assert torch.equal(_generate(model, inputs), want)
    assert generate_batch(model, processor.tokenizer, batch) == generate_batch(ckpt_model, ckpt_tok, batch)
    # The format-aware loader (serving) reads the export the same way.
    served, _ = load_for_inference(exports / "plain")
    assert torch.equal(_generate(served, batch), want)


@pytest.mark.parametrize("which", ["lora", "merged"])
def test_lora_exports_generate_the_checkpoint_tokens(exports, lora_checkpoint, which):
    ckpt_model, ckpt_tok = load_model(lora_checkpoint)
    batch = inference_collator(ckpt_tok, ckpt_model)(_samples())
    model = AutoModelForCausalLM.from_pretrained(exports / which)
    config = json.loads((exports / which / "config.json").read_text())
    names = _weight_names(exports / which)
    if which == "merged":
        assert config["lora"] == {} and not any("lora_" in n for n in names)
        assert not hasattr(model.language_model, "peft_config")
    else:
        assert config["lora"]["llm"]["r"] == 4 and any("lora_A" in n for n in names)
    want = _generate(ckpt_model, batch)
    assert torch.equal(_generate(model, batch), want)
    with ckpt_model.language_model.disable_adapter():  # the adapters matter: without them, other tokens
        assert not torch.equal(_generate(ckpt_model, batch), want)


def _weight_names(directory):
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return list(json.loads(index.read_text())["weight_map"])
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_model_card_holds_training_and_scores(exports):
    card = (exports / "lora" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "## Training configuration" in card and '"projector_type": "qformer"' in card
    assert "kept as adapters" in card and "global_step = 7" in card and "last_logged_loss = 2.5" in card
    assert "| test_asr | ASR | 12.50 | 3 |" in card
    assert "merged into the weights" in (exports / "merged" / "README.md").read_text()
    assert "No evaluation scores" in (exports / "plain" / "README.md").read_text()


def test_bf16_export(tmp_path, tiny_checkpoint):
    export_main(["--model-path", str(tiny_checkpoint), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"])
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_bad_inputs_are_clear_errors(tmp_path, tiny_checkpoint):
    def fails(args, match):
        with pytest.raises(SystemExit, match=match):
            export_main(args)

    fails(["--model-path", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "not a directory")
    fails(["--model-path", str(tmp_path), "--out", str(tmp_path / "o")], "not a speech-llava checkpoint")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fails(["--model-path", str(other), "--out", str(tmp_path / "o")], "expected 'speech_llava'")
    fails(
        ["--model-path", str(tiny_checkpoint), "--out", str(tiny_checkpoint / "inside")],
        "outside the checkpoint",
    )
    fails(
        ["--model-path", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--dtype", "int8"],
        "--dtype 'int8'",
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    fails(["--model-path", str(tiny_checkpoint), "--out", str(taken)], "pass --overwrite")
    assert (taken / "keep.txt").exists()
    export_main(["--model-path", str(tiny_checkpoint), "--out", str(taken), "--overwrite"])
    assert not (taken / "keep.txt").exists() and (taken / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
