"""The three-stage curriculum (scripts/curriculum/) on the synthetic corpus's speaker attributes:
each stage starts exactly where the previous one ended (projector and LoRA), and the frozen-encoder
feature cache filled in stage 1 serves stages 2 and 3."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llava.demo.corpus.attributes import build_attributes
from llava.train import train as train_mod

REPO = Path(__file__).resolve().parents[2]
TINY_PROJECTOR = [
    "--mm_qformer_hidden_size", "32", "--mm_qformer_num_heads", "2",
    "--mm_qformer_intermediate_size", "64", "--mm_qformer_num_hidden_layers", "2",
]  # fmt: skip
ROWS = "0:8"  # the first 8 utterances: row i of every attribute file is row i of MUSTC train


def _entry(dtype, root, task, stem, columns=None, language="en"):
    body = {"datapath": str(root), "task": task, "languages": [language]}
    if columns:
        body["columns"] = columns
    body["partitions"] = {stem: {"amount": ROWS, "destination": "train"}}
    return {dtype: body}


def _configs(tmp_path, corpus):
    attr = tmp_path / "attr"
    build_attributes(corpus, attr)
    cls = [
        _entry("Parquet", attr / "ATTRIBUTES", "CLS", "gender_train"),
        _entry("Parquet", attr / "ATTRIBUTES", "CLS", "rate_train"),
    ]
    every = cls + [
        _entry("Parquet", attr / "ATTRIBUTES", "REG", "rate_train", {"question": "rate_question"}),
        _entry("MuSTC", corpus / "MUSTC", "ASR", "train", language="en-de"),
    ]
    paths = []
    for name, data in (("cls.yml", cls), ("all.yml", every)):
        paths.append(tmp_path / name)
        paths[-1].write_text(yaml.safe_dump({"DATA": data}))
    return paths


def _stage(base_dirs, cfg, out, cache, *extra):
    enc, llm = base_dirs
    return train_mod.main(
        ["--model_name_or_path", str(llm), "--audio_encoder", str(enc), "--data_config_path", str(cfg),
         "--output_dir", str(out), "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
         "--report_to", "none", "--logging_steps", "1", "--dataloader_num_workers", "0", "--disable_tqdm", "True",
         "--save_strategy", "no", "--audio_feature_cache", str(cache), "--audio_feature_cache_dtype", "float32",
         *TINY_PROJECTOR, *extra]
    )  # fmt: skip


def test_three_stages_continue_exactly_and_share_one_feature_cache(
    tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch
):
    cls, every = _configs(tmp_path, tiny_corpus)
    cache = tmp_path / "cache"
    start: dict[str, dict[str, torch.Tensor]] = {}
    real_train = train_mod.SpeechTrainer.train

    def recording(self, *args, **kwargs):  # the trainable weights as training begins
        start[Path(self.args.output_dir).name] = {
            k: v.clone() for k, v in self.speech_model.trainable_state_dict().items()
        }
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(train_mod.SpeechTrainer, "train", recording)
    lora = ["--lora_enable", "True", "--lora_r", "4"]
    s1, s2, s3 = (tmp_path / n for n in ("stage1", "stage2", "stage3"))

    t1 = _stage(tiny_base_dirs, cls, s1, cache, "--learning_rate", "1e-3")
    # 16 rows (gender + rate) over 8 utterances: each utterance encoded once, then read back
    assert (t1.speech_model.audio_tower.feature_cache.stats.misses, t1.state.global_step) == (8, 4)

    t2 = _stage(tiny_base_dirs, cls, s2, cache, "--init_from", str(s1), *lora)
    w1 = load_file(str(s1 / "model.safetensors"))
    assert all(k.startswith("projector.") for k in w1)
    assert all(torch.equal(start["stage2"][k], v) for k, v in w1.items())  # stage 1's projector
    assert all(torch.count_nonzero(v) == 0 for k, v in start["stage2"].items() if "lora_B" in k)  # fresh LoRA
    stats2 = t2.speech_model.audio_tower.feature_cache.stats
    assert (stats2.hits, stats2.misses) == (16, 0)  # every lookup served by stage 1's entries

    t3 = _stage(tiny_base_dirs, every, s3, cache, "--init_from", str(s2), *lora)
    w2 = load_file(str(s2 / "model.safetensors"))
    assert start["stage3"].keys() == w2.keys() and any("lora_A" in k for k in w2)
    for k, v in w2.items():  # stage 3 starts from stage 2's tensors exactly, LoRA included
        assert torch.equal(start["stage3"][k], v), k
    assert any(torch.count_nonzero(v) > 0 for k, v in w2.items() if "lora_B" in k)  # stage 2 trained them
    stats3 = t3.speech_model.audio_tower.feature_cache.stats
    assert (stats3.hits, stats3.misses) == (32, 0)  # CLS, REG and ASR rows of the same 8 utterances
    w3 = load_file(str(s3 / "model.safetensors"))
    assert any(not torch.equal(w3[k], w2[k]) for k in w2)  # and stage 3 trained on from there


def test_init_from_conflicts_fail_before_loading(tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch):
    cls, _ = _configs(tmp_path, tiny_corpus)
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="--init_from and --pretrain_mm_speech_adapter"):
        _stage(
            tiny_base_dirs,
            cls,
            tmp_path / "o",
            tmp_path / "c",
            "--init_from",
            "a",
            "--pretrain_mm_speech_adapter",
            "b",
        )
    with pytest.raises(FileNotFoundError, match="nowhere: not a speech-llava checkpoint"):
        _stage(tiny_base_dirs, cls, tmp_path / "o", tmp_path / "c", "--init_from", str(tmp_path / "nowhere"))


def test_curriculum_scripts_chain_the_stages_and_share_the_cache():
    env = dict(os.environ, DRY_RUN="1", NUM_GPUS="0", DATA_CONFIG="d.yml", CURRICULUM_DIR="/runs/c")
    out = {}
    for script in ("stage1_projector_cls", "stage2_projector_lora_cls", "stage3_all_tasks"):
        cmd = ["bash", str(REPO / "scripts" / "curriculum" / f"{script}.sh"), "--lora_r", "4"]
        out[script] = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    for script, text in out.items():
        assert f"--output_dir /runs/c/{script} " in text
        assert "--audio_feature_cache /runs/c/feature_cache " in text  # one cache for all stages
    assert (
        "--init_from" not in out["stage1_projector_cls"]
        and "--lora_enable" not in out["stage1_projector_cls"]
    )
    assert "--learning_rate 1e-3 " in out["stage1_projector_cls"]
    assert "--init_from /runs/c/stage1_projector_cls --lora_enable True" in out["stage2_projector_lora_cls"]
    assert "--init_from /runs/c/stage2_projector_lora_cls --lora_enable True" in out["stage3_all_tasks"]
    env.pop("DATA_CONFIG")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "curriculum" / "stage3_all_tasks.sh")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "set DATA_CONFIG" in proc.stderr


@pytest.mark.slow
def test_stage_three_script_runs_from_a_stage_two_checkpoint(tmp_path, tiny_base_dirs, tiny_corpus):
    cls, every = _configs(tmp_path, tiny_corpus)
    s1, s2 = tmp_path / "c" / "stage1_projector_cls", tmp_path / "c" / "stage2_projector_lora_cls"
    _stage(tiny_base_dirs, cls, s1, tmp_path / "c" / "feature_cache", "--max_steps", "1")
    _stage(tiny_base_dirs, cls, s2, tmp_path / "c" / "feature_cache", "--max_steps", "1", "--init_from", str(s1),
           "--lora_enable", "True", "--lora_r", "4")  # fmt: skip
    enc, llm = tiny_base_dirs
    env = dict(os.environ, MODEL_PATH=str(llm), AUDIO_ENCODER=str(enc), NUM_GPUS="0", DATA_CONFIG=str(every),
               CURRICULUM_DIR=str(tmp_path / "c"))  # fmt: skip
    cmd = ["bash", str(REPO / "scripts" / "curriculum" / "stage3_all_tasks.sh"), "--max_steps", "1",
           "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--lora_r", "4",
           "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "True", *TINY_PROJECTOR]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised" in proc.stderr and str(s2) in proc.stderr
    w3 = load_file(str(tmp_path / "c" / "stage3_all_tasks" / "model.safetensors"))
    assert w3.keys() == load_file(str(s2 / "model.safetensors")).keys()
