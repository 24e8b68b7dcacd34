"""Training settings: a YAML/JSON file and command-line flags together, nested settings, the
original implementation's flags."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from llava.train.arguments import OriginalFlags
from llava.train.parsing import all_settings, parse_training_args

REPO = Path(__file__).resolve().parents[2]


def _parse(*argv: str):
    return parse_training_args(["--output_dir", "out", "--report_to", "none", *argv])


def _write(tmp_path, text: str, name: str = "cfg.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_file_and_command_line_together(tmp_path):
    cfg = _write(
        tmp_path,
        """
model:
  qformer: {num_queries: 2, num_layers: 3}
  lora: {enable: true, r: 4, target_modules: [q_proj, k_proj, v_proj]}
  encoder_lora: {alpha: 3}
data: {data_subset: 0.1}
loss:
  contrastive_training: true
  contrastive_layer: all
  contrastive_layer_weights: {0: 1.0, 32: 0.5}
training:
  learning_rate: 5.0e-4
  save_total_limit: null
mm_qformer_hidden_size: 64        # flat, by the original flag name
""",
    )
    model, data, loss, training = parse_training_args(
        [
            cfg,
            "--output_dir",
            "o",
            "--report_to",
            "none",
            "--learning_rate",
            "1e-3",
            "--qformer.num_layers",
            "5",
        ]
    )
    assert (model.qformer.num_queries, model.qformer.num_layers, model.qformer.hidden_size) == (2, 5, 64)
    assert model.lora.enable and model.lora.r == 4 and model.lora.target_modules == "q_proj,k_proj,v_proj"
    assert model.encoder_lora.alpha == 3 and model.encoder_lora.r is None
    assert data.data_subset == 0.1
    assert loss.contrastive_training and loss.contrastive_layer == "all"
    assert loss.contrastive_layer_weights == "0:1.0,32:0.5"
    assert training.learning_rate == 1e-3  # the command line wins
    assert training.save_total_limit is None  # null resets an optional setting
    assert training.output_dir == "o"


def test_json_config(tmp_path):
    cfg = _write(tmp_path, '{"training": {"seed": 7}, "lora_r": 32}', "cfg.json")
    model, _, _, training = parse_training_args([cfg, "--output_dir", "o", "--report_to", "none"])
    assert training.seed == 7 and model.lora.r == 32


def test_paper_settings_file_equals_the_paper_script():
    """conf/pretrain-contr-cos-all.yml gives the same settings as the script's flags."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("NNODES", "LAUNCHER", "OUTPUT_DIR", "DATA_CONFIG")
    }
    env.update(DRY_RUN="1", NUM_GPUS="0")
    cmd = ["bash", str(REPO / "scripts" / "pretrain" / "pretrain-contr-cos-all.sh"), "--report_to", "none"]
    line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    flags = shlex.split(line)[3:]  # after "python -m llava.train.train"
    flags[flags.index("--data_config_path") + 1] = "scripts/data_configs/pretrain_asr_mustc_giga.yml"
    from_script = parse_training_args(flags)
    from_file = parse_training_args([str(REPO / "conf" / "pretrain-contr-cos-all.yml"), "--run_name",
                                     "pretrain-contr-cos-all", "--report_to", "none"])  # fmt: skip
    for a, b in zip(from_script[:3], from_file[:3]):
        assert a == b
    hf_a, hf_b = from_script[3].to_dict(), from_file[3].to_dict()
    assert {k: v for k, v in hf_a.items() if hf_b[k] != v} == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("learning_rte: 1.0e-3\n", r"unknown setting 'learning_rte'; did you mean \['learning_rate'"),
        ("model: {contrastive_layer: all}\n", r"'contrastive_layer' is a loss setting, not a model one"),
        ("lora_r: 4\nlora: {r: 8}\n", r"'lora.r' and 'lora_r' set the same setting"),
        ("training: {learning_rate: fast}\n", r"cfg\.yml: learning_rate: invalid float value: 'fast'"),
        ("[1, 2]\n", r"expected a mapping"),
        ("a: [\n", r"not valid YAML"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, text, match):
    cfg = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as err:
        parse_training_args([cfg, "--output_dir", "o"])
    assert "cfg.yml" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yml"):
        parse_training_args([str(tmp_path / "nowhere.yml")])


def test_nested_settings_answer_to_flat_dotted_and_original_names():
    for argv in (["--mm_qformer_num_query_token", "7"], ["--qformer.num_queries", "7"], ["--qformer_num_query_token", "7"]):  # fmt: skip
        assert _parse(*argv)[0].qformer.num_queries == 7
    model = _parse("--lora_encoder", "True", "--encoder_lora.r", "2", "--lora.target_modules", "q_proj")[0]
    assert model.encoder_lora.enable and model.encoder_lora.r == 2 and model.lora.target_modules == "q_proj"
    assert model.lora_target_modules == "q_proj" and model.mm_qformer_num_query_token == 4  # flat views


ORIGINAL_SCRIPT = """--contrastive_training True --contrastive_mode average --contrastive_layer all --contr_asr_combine_loss
--model_name_or_path llm --version llama_3_1 --data_config_path scripts/data_configs/mustc_asr.yml --modality audio
--audio_encoder enc --mm_speech_projector_type qformer --mm_qformer_num_query_token 4 --mm_qformer_num_hidden_layers 4
--tune_mm_mlp_adapter True --bf16 False --output_dir out --num_train_epochs 5 --per_device_train_batch_size 10
--per_device_eval_batch_size 0 --gradient_accumulation_steps 2 --evaluation_strategy no --save_strategy steps
--save_steps 1000 --save_total_limit 10 --learning_rate 1e-4 --weight_decay 0. --warmup_ratio 0.03
--lr_scheduler_type cosine --logging_steps 1 --model_max_length 2048 --gradient_checkpointing True
--dataloader_num_workers 4 --lazy_preprocess True --report_to none --run_name my-run"""


def test_an_original_pretraining_command_line_parses_unchanged(caplog):
    """The arguments of the original's pretrain-contr-cos-all+asr.sh (fp16/tf32 need a GPU, wandb a
    login: those two values are swapped for CPU ones)."""
    with caplog.at_level(logging.WARNING, logger="llava.train.parsing"):
        model, data, loss, training = parse_training_args(ORIGINAL_SCRIPT.split())
    assert (model.model_name_or_path, model.audio_encoder, model.mm_speech_projector_type) == (
        "llm",
        "enc",
        "qformer",
    )
    assert (model.qformer.num_queries, model.qformer.num_layers, model.tune_mm_mlp_adapter) == (4, 4, True)
    assert loss.contrastive_training and loss.contrastive_layer == "all" and loss.contr_asr_combine_loss
    assert data.model_max_length == 2048 and data.data_config_path.endswith("mustc_asr.yml")
    assert str(training.eval_strategy) in ("no", "IntervalStrategy.NO")
    assert (training.save_steps, training.save_total_limit, training.dataloader_num_workers) == (1000, 10, 4)
    assert training.get_warmup_steps(1000) == 30  # --warmup_ratio 0.03 reaches the schedule
    assert "--lazy_preprocess" in caplog.text  # accepted, and said to have no effect


@pytest.mark.parametrize(
    ("argv", "check"),
    [
        (["--speech_tower", "enc"], lambda m, d, lo: m.audio_encoder == "enc"),
        (["--pretrain_mm_speech_adapter", "ck"], lambda m, d, lo: m.pretrain_mm_speech_adapter == "ck"),
        (["--tune_mm_mlp_adapter", "False"], lambda m, d, lo: not m.tune_mm_mlp_adapter),
        (["--freeze_mm_mlp_adapter", "True"], lambda m, d, lo: not m.tune_mm_mlp_adapter),
        (["--tune_audio_encoder", "True"], lambda m, d, lo: not m.freeze_audio_encoder),
        (["--freeze_backbone", "False"], lambda m, d, lo: not m.freeze_backbone),
        (["--qformer_num_attention_heads", "8"], lambda m, d, lo: m.qformer.num_heads == 8),
        (["--qformer_second_per_window", "0.5"], lambda m, d, lo: m.qformer.window_seconds == 0.5),
        (["--lora_enable", "True", "--lora_r", "4"], lambda m, d, lo: m.lora.enable and m.lora.r == 4),
        (["--audio_nwp", "True", "--contrastive_combine_loss", "True"], lambda m, d, lo: lo.contr_asr_combine_loss),
        (["--contrastive_combine_loss", "True"], lambda m, d, lo: not lo.contr_asr_combine_loss),
        (["--position_shift", "True"], lambda m, d, lo: lo.position_shift),
        (["--no_punctuation", "True", "--data_subset", "0.1"], lambda m, d, lo: d.no_punctuation and d.data_subset == 0.1),
    ],
)  # fmt: skip
def test_original_flag_names(argv, check):
    model, data, loss, _ = _parse(*argv)
    assert check(model, data, loss)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--version", "vicuna_v1"], r"--version 'vicuna_v1'.*llama_3_1"),
        (["--modality", "image"], r"--modality 'image': only audio"),
        (["--vision_tower", "clip"], r"image input is not supported"),
        (
            ["--mm_projector_lr", "2e-5"],
            r"--mm_projector_lr 2e-05: the projector trains with --learning_rate",
        ),
    ],
)
def test_original_flags_we_cannot_honour_are_errors(argv, match):
    with pytest.raises(ValueError, match=match):
        _parse(*argv)


def test_every_original_flag_has_a_rule_and_no_name_is_taken_twice():
    assert set(OriginalFlags.RULES) == {f.name for f in dataclasses.fields(OriginalFlags)}
    names = [n for s in all_settings() for n in s.names]
    assert len(names) == len(set(names))


def test_extra_dataclasses_parse_beside_the_training_flags():
    @dataclasses.dataclass
    class Extra:
        num_samples: int = 3

    *_, extra = parse_training_args(
        ["--output_dir", "o", "--num_samples", "5", "--lora_r", "2"], extra=(Extra,)
    )
    assert extra.num_samples == 5
