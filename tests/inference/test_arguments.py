"""The shared flags: both spellings of the prompt flags, settings and options built and checked."""

from __future__ import annotations

import argparse

import pytest

from llava.inference.arguments import (
    add_generation_arguments,
    add_model_arguments,
    add_prompt_arguments,
    prompt_options_from_args,
    settings_from_args,
)


def _parser():
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    add_generation_arguments(p)
    add_prompt_arguments(p)
    return p


def test_flags_build_settings_and_prompt_options():
    args = _parser().parse_args(
        ["--model-path", "ckpt", "--num-beams", "4", "--length-penalty", "0.5", "--repetition-penalty", "1.2"]
        + [
            "--stop-at-newline",
            "--seed",
            "7",
            "--prompt_format",
            "instruction_first",
            "--system-prompt",
            "none",
        ]
        + ["--audio_feature_cache", "cache"]
    )
    settings = settings_from_args(args)
    assert (settings.num_beams, settings.length_penalty, settings.repetition_penalty) == (4, 0.5, 1.2)
    assert settings.stop_at_newline and settings.seed == 7 and not settings.do_sample
    opts = prompt_options_from_args(args)
    assert opts.prompt_format == "instruction_first" and opts.system_turn() is None
    assert args.audio_feature_cache == "cache" and args.dtype == "auto"
    defaults = _parser().parse_args(["--model-path", "ckpt"])
    assert defaults.prompt_format is None and prompt_options_from_args(defaults).format_name == "original"
    assert settings_from_args(defaults).max_new_tokens == 200


def test_bad_flags_fail_with_their_names():
    args = _parser().parse_args(["--model-path", "c", "--instruction-sampling", "often"])
    with pytest.raises(ValueError, match="--instruction_sampling 'often'"):
        prompt_options_from_args(args)
    args = _parser().parse_args(["--model-path", "c", "--top-p", "1.5"])
    with pytest.raises(ValueError, match="--top-p"):
        settings_from_args(args)
