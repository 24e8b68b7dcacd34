"""The training entry point end to end on tiny models: resume, scripts, multi-process, bad input,
skip counts with loader workers, the staged curriculum."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llava.demo.corpus.attributes import build_attributes
from llava.train import train as train_mod
from tests.helpers import TINY_PROJECTOR_FLAGS, train_argv

REPO = Path(__file__).resolve().parents[2]


def _args(base_dirs, corpus, out, *extra):
    return train_argv(base_dirs, corpus / "configs" / "pretrain_asr.yml", out, *extra)


def _weights(d):
    return load_file(str(Path(d) / "model.safetensors"))


def test_resume_gives_the_same_projector_as_an_uninterrupted_run(tmp_path, tiny_base_dirs, tiny_corpus):
    # `--save_steps` alone saves every N steps, as in the Trainer.
    common = ["--max_steps", "4", "--save_steps", "2", "--contrastive_training", "True",
              "--contrastive_layer", "all", "--contr_asr_combine_loss", "True", "--position_shift", "True"]  # fmt: skip
    straight = tmp_path / "straight"
    train_mod.main(_args(tiny_base_dirs, tiny_corpus, straight, *common))
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # A run killed after its step-2 checkpoint leaves exactly that checkpoint behind.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    (resumed / "checkpoint-1").mkdir()  # older (and unusable): "True" must take the newest
    # The Trainer's convention: True = the newest checkpoint-N in --output_dir.
    t = train_mod.main(
        _args(tiny_base_dirs, tiny_corpus, resumed, *common, "--resume_from_checkpoint", "True")
    )
    assert t.state.global_step == 4
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(k.startswith("projector.") for k in a)
    for k in a:
        # Same data, same RNG: equal up to float summation order (differences seen: ~1e-10).
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    mid = _weights(straight / "checkpoint-2")
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # the last two steps really trained


def test_shared_prefix_reuse_trains_the_same_projector(tmp_path, tiny_base_dirs, tiny_corpus):
    # ASR pretraining through the real collator: every row opens with the paper layout's system turn.
    models = {}
    for flag in ("True", "False"):
        argv = _args(tiny_base_dirs, tiny_corpus, tmp_path / flag, "--max_steps", "3")
        models[flag] = train_mod.main([*argv, "--reuse_shared_prefix", flag]).model.model  # unwrapped
    on, off = models["True"], models["False"]
    assert on.reuse_shared_prefix and not off.reuse_shared_prefix
    assert on.prefix_cache.misses >= 1 and on.prefix_cache.hits >= 1
    assert off.prefix_cache.misses == off.prefix_cache.hits == 0
    a, b = _weights(tmp_path / "True"), _weights(tmp_path / "False")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_nonfinite_losses_are_skipped_then_fatal(tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch):
    from llava.train import trainer as trainer_mod
    from llava.train.objectives import ObjectiveSet

    real = ObjectiveSet.forward
    calls = {"n": 0}

    def sometimes_nan(self, model, batch):
        terms = real(self, model, batch)
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    monkeypatch.setattr(ObjectiveSet, "forward", sometimes_nan)
    t = train_mod.main(_args(tiny_base_dirs, tiny_corpus, tmp_path / "a", "--max_steps", "4"))
    assert t.nonfinite_steps == 2
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "a").values())

    monkeypatch.setattr(
        ObjectiveSet, "forward", lambda self, m, b: {k: v * float("inf") for k, v in real(self, m, b).items()}
    )
    with pytest.raises(trainer_mod.NonFiniteLossError, match="non-finite"):
        train_mod.main(
            _args(
                tiny_base_dirs, tiny_corpus, tmp_path / "b", "--max_steps", "6", "--max_nonfinite_steps", "3"
            )
        )


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--contrastive_training", "True", "--per_device_train_batch_size", "1"], "at least 2"),
        (["--contrastive_training", "True", "--contrastive_layer", "7"], "7"),
        (["--contrastive_training", "True", "--contrastive_mode", "dot"], "contrastive_mode"),
        (["--audio_nwp", "True"], "word_boundaries"),
        (["--mm_speech_projector_type", "perceiver"], "unknown projector type"),
        (["--mm_speech_select_layer", "5"], r"mm_speech_select_layer\) = 5 is out of range"),
        (
            ["--lora_enable", "True", "--lora_target_modules", "q_proj,qkv"],
            r"--lora_target_modules: \['qkv'\]",
        ),
        (
            ["--lora_encoder", "True", "--lora_target_modules", "gate_proj"],
            r"--encoder_lora_target_modules \(unset",
        ),
        (["--lora_encoder", "True", "--encoder_lora_bias", "some"], r"--encoder_lora_\*: LoRA bias 'some'"),
        (["--freeze_modules", "projector,llm"], r"--freeze_modules: 'llm' matches no module"),
        (["--frozen_dtype", "fp8"], r"--frozen_dtype 'fp8': expected auto or one of"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, tiny_base_dirs, tiny_corpus, extra, match):
    with pytest.raises(ValueError, match=match):
        train_mod.main(_args(tiny_base_dirs, tiny_corpus, tmp_path / "x", "--max_steps", "1", *extra))
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_resume_true_without_a_checkpoint_fails_before_loading(
    tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch
):
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: pytest.fail("model loaded"))
    for value, out in [("True", tmp_path / "empty"), (str(tmp_path / "nowhere"), tmp_path / "x")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint"):
            train_mod.main(_args(tiny_base_dirs, tiny_corpus, out, "--resume_from_checkpoint", value))


@pytest.mark.parametrize(
    "extra, match",
    [
        (
            ["--prompt_format", "paper"],
            r"--prompt_format 'paper': unknown prompt format; known: \['original'",
        ),
        (["--system_prompt", "prompts/missing.txt"], r"--system_prompt prompts/missing\.txt: file not found"),
        (["--instruction_sampling", "often"], r"--instruction_sampling 'often'"),
    ],
)
def test_bad_prompt_options_fail_before_loading(
    tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch, extra, match
):
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=match):
        train_mod.main(_args(tiny_base_dirs, tiny_corpus, tmp_path / "x", *extra))


def test_resume_checkpoint_follows_the_trainer_conventions(tmp_path):
    from llava.train.arguments import TrainingArguments

    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2", "other"):
        (tmp_path / name).mkdir()

    def resolve(value):
        return train_mod.resume_checkpoint(
            TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=value)
        )

    assert resolve("True") == str(tmp_path / "checkpoint-10")  # numeric, not lexical, order
    assert resolve(None) is None and resolve("False") is None
    assert resolve(str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")


@pytest.mark.parametrize(
    "audio_nwp, loss, mode, transcript, special",
    [
        (False, {}, "chat", False, False),
        (False, {"contrastive_training": True}, "chat", True, False),
        (True, {}, "mixed", False, False),
        (True, {"contrastive_training": True, "contrastive_layer": "0"}, "mixed", True, True),
        (True, {"contrastive_training": True, "contrastive_layer": "0",
                "mixed_contrastive_special_tokens": False}, "mixed", True, False),
    ],
)  # fmt: skip
def test_build_collator_follows_the_objective(tiny_tokenizer, audio_nwp, loss, mode, transcript, special):
    from llava.dataset.collator import SpeechCollator
    from llava.tokenization import add_audio_token
    from llava.train.arguments import DataArguments, LossArguments
    from llava.train.objectives import build_objective

    tok = copy.deepcopy(tiny_tokenizer)
    add_audio_token(tok)
    data = DataArguments(audio_nwp=audio_nwp, model_max_length=77)
    objective = build_objective(LossArguments(**loss), data, num_llm_layers=2)
    collator = train_mod.build_collator(tok, lambda n: n // 320, objective, data, "SYS")
    assert isinstance(collator, SpeechCollator)
    assert (collator.mode, collator.with_transcript, collator.transcript_special_tokens) == (
        mode,
        transcript,
        special,
    )
    assert (collator.max_length, collator.system_prompt) == (77, "SYS")


def test_encoder_lora_settings_default_to_the_llm_flags():
    args = train_mod.parse_args(["--lora_r", "16", "--lora_alpha", "32", "--lora_bias", "all",
                                 "--encoder_lora_alpha", "3", "--encoder_lora_target_modules", "k_proj"])[0]  # fmt: skip
    llm, enc = train_mod.lora_settings(args, "llm"), train_mod.lora_settings(args, "encoder")
    assert (llm.r, llm.alpha, llm.bias, llm.target_modules) == (16, 32, "all", ["q_proj", "v_proj"])
    assert (enc.r, enc.alpha, enc.bias, enc.target_modules) == (16, 3, "all", ["k_proj"])


def test_lora_per_component_and_freeze_list_from_the_command_line(tmp_path, tiny_base_dirs, tiny_corpus):
    out = tmp_path / "lora"
    train_mod.main(
        _args(tiny_base_dirs, tiny_corpus, out, "--max_steps", "1", "--save_strategy", "no",
              "--lora_enable", "True", "--lora_r", "4", "--lora_use_rslora", "True",
              "--lora_encoder", "True", "--encoder_lora_r", "2", "--encoder_lora_target_modules", "k_proj,out_proj",
              "--encoder_lora_use_rslora", "False",
              "--freeze_modules", "language_model.model.layers.1")
    )  # fmt: skip
    lora = json.loads((out / "config.json").read_text())["lora"]
    assert (lora["llm"]["r"], lora["llm"]["use_rslora"], lora["llm"]["target_modules"]) == (
        4,
        True,
        ["q_proj", "v_proj"],
    )
    assert (lora["encoder"]["r"], lora["encoder"]["use_rslora"]) == (2, False)
    assert lora["encoder"]["target_modules"] == ["k_proj", "out_proj"]
    w = _weights(out)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in w if k.startswith("audio_tower")} == {
        "k_proj",
        "out_proj",
    }
    assert all(v.shape[0] == 2 for k, v in w.items() if k.startswith("audio_tower") and "lora_A" in k)
    assert all(v.shape[0] == 4 for k, v in w.items() if k.startswith("language_model") and "lora_A" in k)
    # The frozen layer's adapters do not train, so they are not in the checkpoint.
    assert any(".layers.0." in k for k in w) and not any(
        ".layers.1." in k and "language_model" in k for k in w
    )


def test_dataloader_workers_see_each_epoch(tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch):
    """Persistent workers keep their own copy of the dataset; prompts are still drawn per epoch."""
    from llava.dataset.dataset import SpeechDataset

    log = tmp_path / "fetched.txt"
    real = SpeechDataset.sample_or_skip  # how the trainer fetches items

    def recording(self, i):
        with open(log, "a") as f:  # appended from the worker processes
            f.write(f"{os.getpid()} {self.epoch}\n")
        return real(self, i)

    monkeypatch.setattr(SpeechDataset, "sample_or_skip", recording)
    args = _args(tiny_base_dirs, tiny_corpus, tmp_path / "w", "--num_train_epochs", "2", "--data_subset", "0.2",
                 "--save_strategy", "no")  # fmt: skip
    args[args.index("--dataloader_num_workers") + 1] = "1"
    t = train_mod.main(args)
    assert t.args.dataloader_persistent_workers and t.args.dataloader_prefetch_factor == 2
    rows = [line.split() for line in log.read_text().splitlines()]
    pids = {pid for pid, _ in rows}
    assert str(os.getpid()) not in pids and len(pids) == 1  # one persistent worker did all the loading
    epochs = [int(e) for _, e in rows]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1}


def _asr_corpus_with_a_bad_row(root: Path, rows: int = 6, bad: int = 2) -> Path:
    """`rows` ASR rows of tones, row `bad` with NaN samples (only decoding finds out), mixing weight 2
    (every row twice per epoch)."""
    import numpy as np

    from llava.dataset.audio import encode_audio
    from tests.helpers import nan_wav, write_asr_config

    t = np.arange(int(0.6 * 16000)) / 16000
    records = []
    for i in range(rows):
        wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
        audio = nan_wav(0.6) if i == bad else encode_audio(wave, 16000)
        records.append({"audio": audio, "transcription": f"one two three {i}", "duration": 0.6})
    return write_asr_config(root, records, weight=2.0)


def test_rows_failing_in_loader_workers_are_counted_once_at_the_end(
    tmp_path, tiny_base_dirs, tiny_corpus, caplog
):
    """Rows decoded in worker processes: the bad row, fetched 4 times (weight 2, two epochs) by two
    workers, is counted once in the end-of-run summary and in the logged skipped_samples."""
    args = _args(tiny_base_dirs, tiny_corpus, tmp_path / "out", "--num_train_epochs", "2",
                 "--save_strategy", "no", "--per_device_train_batch_size", "2")  # fmt: skip
    args[args.index("--dataloader_num_workers") + 1] = "2"
    args[args.index("--data_config_path") + 1] = str(_asr_corpus_with_a_bad_row(tmp_path))
    with caplog.at_level("INFO", logger="llava.train"):
        t = train_mod.main(args)
    assert t.args.dataloader_num_workers == 2 and t.state.global_step == 12  # 12 items per epoch / 2
    assert t.train_dataset.skips.as_dict() == {}  # the main process decoded nothing itself
    assert dict(t.skipped_samples) == {"non_finite_audio": 1}
    assert list(t.row_skips.rows) == ["MuSTC_NWP.ASR.en-de:en-de_train_processed:2"]
    assert [h["skipped_samples"] for h in t.state.log_history if "skipped_samples" in h][-1] == 1
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training data:")]
    assert summary == [
        "training data: skipped 1 of 6 samples: non_finite_audio=1\n"
        "  MuSTC_NWP.ASR.en-de:en-de_train_processed: non_finite_audio=1"
    ]


def test_malformed_data_config_names_file_and_field(tmp_path, tiny_base_dirs, tiny_corpus):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "DATA:\n  - MuSTC:\n      datapath: /nowhere\n      task: ASR\n      languages: [en-de]\n      partitions: {train: {amount: 'lots'}}\n"
    )
    args = _args(tiny_base_dirs, tiny_corpus, tmp_path / "x", "--max_steps", "1")
    args[args.index("--data_config_path") + 1] = str(bad)
    with pytest.raises(ValueError, match=r"bad\.yml.*amount"):
        train_mod.main(args)


SCRIPTS = sorted(p.stem for p in (REPO / "scripts" / "pretrain").glob("*.sh"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_pretrain_script_runs_a_few_steps(tmp_path, tiny_base_dirs, tiny_corpus, script):
    if "wasser" in script:
        pytest.importorskip("geomloss")
    enc, llm = tiny_base_dirs
    mixed = "mixed" in script
    env = dict(
        os.environ,
        MODEL_PATH=str(llm),
        AUDIO_ENCODER=str(enc),
        DATA_CONFIG=str(tiny_corpus / "configs" / ("pretrain_mixed.yml" if mixed else "pretrain_asr.yml")),
        OUTPUT_DIR=str(tmp_path / "out"),
        NUM_GPUS="0",
    )
    cmd = ["bash", str(REPO / "scripts" / "pretrain" / f"{script}.sh"), "--max_steps", "2",
           "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
           "--disable_tqdm", "True", *TINY_PROJECTOR_FLAGS]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _two_process_run(tmp_path, base_dirs, corpus, name, port, *extra):
    args = _args(base_dirs, corpus, tmp_path / name, "--max_steps", "2", "--contrastive_training", "True",
                 "--contrastive_layer", "all", "--contrastive_gather", "True", "--save_strategy", "no", *extra)  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "llava.train.train", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data-parallel processes: 2" in proc.stdout + proc.stderr
    w = _weights(tmp_path / name)
    assert all(torch.isfinite(v).all() for v in w.values())


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path, tiny_base_dirs, tiny_corpus):
    _two_process_run(tmp_path, tiny_base_dirs, tiny_corpus, "ddp", 29517)


@pytest.mark.slow
def test_two_process_deepspeed_zero2_run(tmp_path, tiny_base_dirs, tiny_corpus):
    pytest.importorskip("deepspeed")
    _two_process_run(
        tmp_path,
        tiny_base_dirs,
        tiny_corpus,
        "zero2",
        29519,
        "--deepspeed",
        str(REPO / "conf" / "zero2.json"),
    )


@pytest.mark.slow
def test_two_node_launch_on_one_machine(tmp_path, tiny_base_dirs, tiny_corpus):
    """scripts/launch.sh with NNODES=2: two torchrun agents (one per "node") meet at a c10d
    rendezvous and train one data-parallel run over gloo."""
    enc, llm = tiny_base_dirs
    env = dict(os.environ, MODEL_PATH=str(llm), AUDIO_ENCODER=str(enc), NUM_GPUS="0", NNODES="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RDZV_ID="two-nodes", OMP_NUM_THREADS="1",
               DATA_CONFIG=str(tiny_corpus / "configs" / "pretrain_asr.yml"), OUTPUT_DIR=str(tmp_path / "out"))  # fmt: skip
    cmd = ["bash", str(REPO / "scripts" / "pretrain" / "pretrain-asr.sh"), "--max_steps", "2",
           "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
           "--dataloader_num_workers", "0", "--disable_tqdm", "True", *TINY_PROJECTOR_FLAGS]  # fmt: skip
    nodes = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(log[-2000:] for log in logs)
    assert "data-parallel processes: 2" in "".join(logs)
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "out").values())


@pytest.mark.parametrize(
    ("env", "extra", "want", "unwanted"),
    [
        ({"NUM_GPUS": "0"}, [], ["python -m llava.train.train"], ["--deepspeed", "--gradient_checkpointing", "--bf16"]),
        ({"NUM_GPUS": "4"}, [], ["torchrun --nnodes 1 --nproc_per_node 4", "-m llava.train.train", "--bf16 True"],
         ["--deepspeed", "--gradient_checkpointing"]),
        ({"NUM_GPUS": "4"}, ["--lora_enable", "True"], ["torchrun", "--deepspeed " + str(REPO / "conf" / "zero2.json")],
         ["--gradient_checkpointing"]),
        ({"NUM_GPUS": "4"}, ["--freeze_backbone=False"], ["--deepspeed", "--gradient_checkpointing True"], []),
        ({"NUM_GPUS": "4", "GRADIENT_CHECKPOINTING": "1"}, [], ["--gradient_checkpointing True"], ["--deepspeed"]),
        ({"NUM_GPUS": "4", "DEEPSPEED_CONFIG": "z3.json", "LAUNCHER": "deepspeed"}, [],
         ["deepspeed --num_gpus 4", "--module llava.train.train", "--deepspeed z3.json"], ["torchrun"]),
        ({"NUM_GPUS": "8", "NNODES": "2", "MASTER_ADDR": "node1", "RDZV_ID": "42"}, [],
         ["--nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node1:29500 --rdzv_id 42"], []),
        ({"NUM_GPUS": "0", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node1"}, [],
         ["torchrun --nnodes 2 --nproc_per_node 1 --node_rank 1 --master_addr node1"], ["--rdzv"]),
    ],
)  # fmt: skip
def test_launcher_choices(env, extra, want, unwanted):
    """Plain DDP for projector-only training, DeepSpeed for LoRA / full fine-tuning, gradient
    checkpointing off unless asked for (or the whole LLM trains), multi-node through torchrun."""
    run_env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "LAUNCHER")}
    run_env.update(env, DRY_RUN="1")
    cmd = ["bash", str(REPO / "scripts" / "pretrain" / "pretrain-asr.sh"), *extra]
    out = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=True).stdout
    assert all(w in out for w in want), out
    assert not any(u in out for u in unwanted), out


@pytest.mark.parametrize(
    ("script", "want", "unwanted"),
    [
        (
            "finetune_mixed_tasks_10%",
            ["--data_subset 0.1 --pretrain_mm_speech_adapter /ckpt/stage1 --seed 7"],
            [],
        ),
        (
            "finetune_mixed_tasks_100%",
            ["--data_subset 1.0 --pretrain_mm_speech_adapter /ckpt/stage1 --seed 7"],
            [],
        ),
        ("finetune_no_pretraining_100%", ["--data_subset 1.0 --seed 7"], ["--pretrain_mm_speech_adapter"]),
    ],
)
def test_finetune_scripts_share_one_body(script, want, unwanted):
    env = dict(os.environ, DRY_RUN="1", NUM_GPUS="0", PRETRAINED_PROJECTOR="/ckpt/stage1")
    cmd = ["bash", str(REPO / "scripts" / "finetune" / f"{script}.sh"), "--seed", "7"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert (
        "--num_train_epochs 2 " in out
        and "--gradient_accumulation_steps 5 " in out
        and f"--run_name {script} " in out
    )
    assert all(w in out for w in want) and not any(u in out for u in unwanted), out


def test_finetune_from_a_projector_needs_the_checkpoint():
    env = {k: v for k, v in os.environ.items() if k != "PRETRAINED_PROJECTOR"}
    env.update(DRY_RUN="1", NUM_GPUS="0")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "finetune" / "finetune_mixed_tasks_10%.sh")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "set PRETRAINED_PROJECTOR" in proc.stderr


# ----------------------------------------------------------------------------- the curriculum (--init_from)
# The three-stage curriculum (scripts/curriculum/) on the synthetic corpus's speaker attributes: each
# stage starts exactly where the previous one ended (projector and LoRA), and the frozen-encoder
# feature cache filled in stage 1 serves stages 2 and 3.
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
         *TINY_PROJECTOR_FLAGS, *extra]
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
           "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "True", *TINY_PROJECTOR_FLAGS]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised" in proc.stderr and str(s2) in proc.stderr
    w3 = load_file(str(tmp_path / "c" / "stage3_all_tasks" / "model.safetensors"))
    assert w3.keys() == load_file(str(s2 / "model.safetensors")).keys()
