"""Prompt options: defaults are the paper's layout, errors name the flag, the collator renders them."""

from __future__ import annotations

import numpy as np
import pytest

from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
from llava.inference.prompts import PromptOptions, inference_collator


def test_defaults_are_the_papers_layout():
    opts = PromptOptions()
    assert opts.format_name == "original" and opts.system_turn() == PAPER_SYSTEM_PROMPT
    assert opts.as_dict() == {
        "prompt_format": "original",
        "system_prompt": PAPER_SYSTEM_PROMPT,
        "instruction_sampling": "fixed",
    }
    first = PromptOptions("instruction_first")
    assert first.system_turn() is None and first.as_dict()["instruction_sampling"] == "random"


def test_system_prompt_text_file_or_none(tmp_path):
    path = tmp_path / "system.txt"
    path.write_text("You transcribe.\n")
    assert PromptOptions(system_prompt=str(path)).system_turn() == "You transcribe."
    assert PromptOptions(system_prompt="Be brief.").system_turn() == "Be brief."
    assert PromptOptions(system_prompt="none").system_turn() is None


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"prompt_format": "llava"}, "--prompt_format 'llava'"),
        ({"instruction_sampling": "sometimes"}, "--instruction_sampling 'sometimes'"),
        ({"system_prompt": "missing/system.txt"}, "--system_prompt missing/system.txt"),
    ],
)
def test_bad_options_name_their_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        PromptOptions(**kwargs).check()


def test_inference_collator_renders_the_system_turn_and_never_truncates(tiny_model):
    model, tok = tiny_model
    sample = {
        "id": "u0",
        "task": "ASR",
        "audio": np.zeros(160000, dtype=np.float32),  # 10 s: many audio positions
        "prompt": "<audio>\nTranscribe the audio.",
        "target": "",
    }
    short = dict(sample, id="u1", audio=np.zeros(8000, dtype=np.float32))
    batch = inference_collator(tok, model)([sample, short])
    assert batch["ids"] == ["u0", "u1"] and batch["skipped"] == {}
    assert batch["attention_mask"][1, 0] == 0  # left padded
    text = tok.decode(batch["input_ids"][0])
    assert PAPER_SYSTEM_PROMPT in text and text.index(PAPER_SYSTEM_PROMPT) < text.index("Transcribe")
    plain = inference_collator(tok, model, PromptOptions("instruction_first"))([short])
    assert PAPER_SYSTEM_PROMPT not in tok.decode(plain["input_ids"][0])
