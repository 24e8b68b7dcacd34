"""The study's training runs: the script's own command, run in a process forked from a pre-imported
server, trains exactly what a fresh process trains; what the parser cannot read back, or what is not
the plain entry point, runs as a subprocess; failures and divergence are reported as before."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from llava.demo import script_runs
from llava.demo.phases import DivergedError, PhaseError, cpu_seconds
from llava.demo.script_runs import ENTRY, FRESH_ENV, run_script, script_command
from llava.model.checkpoint import read_weights
from tests.helpers import TINY_PROJECTOR_FLAGS

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_ASR = REPO / "scripts" / "pretrain" / "pretrain-asr.sh"


def _env(base_dirs, corpus: Path, out: Path) -> dict[str, str]:
    enc, llm = base_dirs
    return {
        "MODEL_PATH": str(llm),
        "AUDIO_ENCODER": str(enc),
        "DATA_CONFIG": str(corpus / "configs" / "pretrain_asr.yml"),
        "OUTPUT_DIR": str(out),
        "NUM_GPUS": "0",
    }


def test_the_script_command_is_read_back_argument_for_argument(tmp_path):
    env = {"MODEL_PATH": str(tmp_path / "an llm"), "AUDIO_ENCODER": "enc", "DATA_CONFIG": "d.yml",
           "OUTPUT_DIR": str(tmp_path / "out dir"), "NUM_GPUS": "0"}  # fmt: skip
    args = ["--max_steps", "3", "--run_name", "it's a name", "--contrastive_layer_weights", "0:1,2:0.05"]
    argv = script_command(PRETRAIN_ASR, args, env)
    assert tuple(argv[:3]) == ENTRY
    assert argv[argv.index("--model_name_or_path") + 1] == str(tmp_path / "an llm")  # a space survives
    assert argv[argv.index("--output_dir") + 1] == str(tmp_path / "out dir")
    assert argv[-len(args) :] == args  # the caller's flags last, so they win
    # bash quotes a control character as $'...', which POSIX splitting cannot read: not guessed at.
    assert script_command(PRETRAIN_ASR, ["--run_name", "two\nlines"], env) is None
    # Not the one-process entry point (a launcher set in the environment): the caller falls back.
    torchrun = script_command(PRETRAIN_ASR, [], {**env, "LAUNCHER": "torchrun"})
    assert torchrun is not None and tuple(torchrun[:3]) != ENTRY


@pytest.mark.slow
def test_a_forked_run_trains_what_a_fresh_process_trains(tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch):
    args = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none",
            "--save_strategy", "no", "--dataloader_num_workers", "0", "--disable_tqdm", "False",
            "--logging_steps", "1", "--seed", "3", *TINY_PROJECTOR_FLAGS]  # fmt: skip
    weights, bars = {}, {}
    for mode in ("forked", "fresh"):
        if mode == "fresh":
            monkeypatch.setenv(FRESH_ENV, "1")
        out = tmp_path / mode
        out.mkdir()
        bars[mode] = tqdm(total=3, file=io.StringIO())
        cpu = cpu_seconds()
        run_script(
            mode, PRETRAIN_ASR, args, out / "train.log", _env(tiny_base_dirs, tiny_corpus, out), bars[mode]
        )
        weights[mode] = read_weights(out)
        # The run's CPU time is counted for this process's phase, forked by the server or not.
        assert cpu_seconds() - cpu > 1.0
        assert "trainable weights saved" in (out / "train.log").read_text()  # the run's output is in its log
    assert script_runs._context is not None  # the forked mode went through the server
    assert weights["forked"].keys() == weights["fresh"].keys()
    assert all((weights["forked"][k] == weights["fresh"][k]).all() for k in weights["fresh"])
    assert bars["forked"].n == bars["fresh"].n == 3  # the step counter moved the bar in both modes


@pytest.mark.slow
def test_a_forked_run_that_fails_names_its_log_and_divergence_is_recognised(
    tmp_path, tiny_base_dirs, tiny_corpus
):
    out = tmp_path / "bad"
    out.mkdir()
    env = _env(tiny_base_dirs, tiny_corpus, out)
    with pytest.raises(PhaseError, match=r"phase 'bad' failed \(exit 1\); log: .*train.log"):
        run_script("bad", PRETRAIN_ASR, ["--max_steps", "1", "--no_such_flag", "1"], out / "train.log", env)
    assert "no_such_flag" in (out / "train.log").read_text()
    # A run that stops on non-finite losses is a result (the study records it), not a failure.
    args = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none",
            "--save_strategy", "no", "--dataloader_num_workers", "0", "--learning_rate", "inf",
            "--max_nonfinite_steps", "1", *TINY_PROJECTOR_FLAGS]  # fmt: skip
    with pytest.raises(DivergedError, match="non-finite"):
        run_script("diverging", PRETRAIN_ASR, args, out / "train.log", env)
