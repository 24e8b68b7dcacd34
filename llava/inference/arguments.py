"""Command-line flags shared by evaluation, batch inference and the chat CLI, and what they build.

Flags are spelled with dashes (`--max-new-tokens`); the prompt flags also accept the training
scripts' underscore spelling (`--prompt_format`), so one set of options works everywhere.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llava.dataset.prompts import DEFAULT_PROMPT_FORMAT, INSTRUCTION_SAMPLING, PROMPT_FORMATS
from llava.inference.generation import GenerationSettings
from llava.inference.loading import DTYPES, load_model
from llava.inference.prompts import PromptOptions

__all__ = [
    "add_generation_arguments",
    "add_model_arguments",
    "add_prompt_arguments",
    "load_model_from_args",
    "prompt_options_from_args",
    "settings_from_args",
]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-path, --audio-encoder, --llm, --device, --dtype, --audio-feature-cache."""
    g = parser.add_argument_group("model")
    g.add_argument("--model-path", required=True, help="checkpoint directory (trainable weights + config)")
    g.add_argument(
        "--audio-encoder", default=None, help="override the base encoder recorded in the checkpoint"
    )
    g.add_argument("--llm", default=None, help="override the base LLM recorded in the checkpoint")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="weights dtype; auto = bfloat16 on a GPU that supports it, else float32",
    )
    g.add_argument(
        "--audio-feature-cache",
        "--audio_feature_cache",
        default=None,
        metavar="DIR",
        help="frozen-encoder feature cache (shared with training); off by default",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags: greedy unless --temperature > 0 (sampling) or --num-beams > 1 (beam search)."""
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = no sampling; > 0 samples")
    g.add_argument("--top-k", type=int, default=None, help="sampling: keep the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sampling: nucleus probability mass")
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating generated tokens"
    )
    g.add_argument("--num-beams", type=int, default=1, help="> 1: beam search with this many beams")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
    g.add_argument("--stop-at-newline", action="store_true", help="end each output at its first newline")
    g.add_argument("--seed", type=int, default=0, help="sampling: seeds each utterance's own random stream")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """--prompt-format, --system-prompt, --instruction-sampling (as the training flags)."""
    g = parser.add_argument_group("prompt")
    g.add_argument(
        "--prompt-format",
        "--prompt_format",
        default=None,
        help=f"prompt layout, one of {list(PROMPT_FORMATS)} (default: the data config's PROMPT_FORMAT, "
        f"else the paper's, {DEFAULT_PROMPT_FORMAT!r})",
    )
    g.add_argument(
        "--system-prompt",
        "--system_prompt",
        default=None,
        help="system turn: a text or a file holding it; 'none' for none (default: the layout's)",
    )
    g.add_argument(
        "--instruction-sampling",
        "--instruction_sampling",
        default=None,
        help=f"one of {list(INSTRUCTION_SAMPLING)} (default: the layout's)",
    )


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """`GenerationSettings` from the flags of `add_generation_arguments` (validated)."""
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        stop_at_newline=args.stop_at_newline,
        seed=args.seed,
    )


def prompt_options_from_args(args: argparse.Namespace) -> PromptOptions:
    """`PromptOptions` from the flags of `add_prompt_arguments`, checked (a missing file, a typo)."""
    options = PromptOptions(args.prompt_format, args.system_prompt, args.instruction_sampling)
    options.check()
    return options


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, PreTrainedTokenizerBase]:
    """`load_model` with the flags of `add_model_arguments`: frozen, in eval mode."""
    return load_model(
        args.model_path,
        audio_encoder=args.audio_encoder,
        llm=args.llm,
        device=args.device,
        dtype=args.dtype,
        audio_feature_cache=args.audio_feature_cache,
    )
