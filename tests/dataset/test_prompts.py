from __future__ import annotations

import json

import numpy as np
import pytest

from llava.constants import AUDIO_TOKEN
from llava.dataset.config import ConfigError
from llava.dataset.prompts import (
    PAPER_SYSTEM_PROMPT,
    PROMPT_FORMATS,
    PromptBank,
    Prompter,
    attach_audio,
    get_prompt_format,
    resolve_system_prompt,
)
from llava.dataset.seeding import stable_rng
from llava.dataset.tasks import get_task


def test_shipped_prompts_are_valid():
    bank = PromptBank.load()
    assert {"ASR", "ST", "SQA"} <= set(bank.tasks)
    for task in bank.tasks:
        for p in bank.candidates(task, source_language="en", target_language="de", question="Who?"):
            assert p.count(AUDIO_TOKEN) == 1
            assert "{" not in p and "<target-language>" not in p
    st = bank.candidates("ST", source_language="en", target_language="de")
    assert all("German" in p for p in st) and any("English" in p for p in st)


def test_eval_uses_first_prompt_and_training_is_seeded():
    bank = PromptBank.load()
    first = bank.candidates("ASR", source_language="en")[0]
    assert bank.choose("ASR", source_language="en") == first
    draws = [bank.choose("ASR", rng=stable_rng(42, "utt-1", epoch)) for epoch in range(20)]
    again = [bank.choose("ASR", rng=stable_rng(42, "utt-1", epoch)) for epoch in range(20)]
    assert draws == again
    assert len(set(draws)) > 1  # varies across epochs
    other_seed = [bank.choose("ASR", rng=stable_rng(7, "utt-1", epoch)) for epoch in range(20)]
    assert other_seed != draws


def test_language_lookup_and_original_placeholders():
    bank = PromptBank(
        {
            "ASR": {"de": ["Schreib es auf."], "en": ["Write it down."]},
            "ST": {"en": ["From <source-language> to <target-language>: <audio> please"]},
            "SQA": ["Question: <question>"],
        }
    )
    assert bank.choose("ASR", source_language="de") == "Schreib es auf.\n<audio>"
    assert bank.choose("ASR", source_language="fr") == "Write it down.\n<audio>"  # falls back to en
    assert (
        bank.choose("ST", source_language="en", target_language="fr")
        == "From English to French: <audio> please"
    )
    assert bank.choose("SQA", question="Who won?\n<audio>") == "Question: Who won?\n<audio>"
    with pytest.raises(KeyError, match="no prompts for task 'XYZ'"):
        bank.choose("XYZ")


def test_attach_audio():
    assert attach_audio("Hi") == "Hi\n<audio>"
    assert attach_audio("<audio> Hi") == "<audio> Hi"
    with pytest.raises(ValueError):
        attach_audio("<audio><audio>")


@pytest.mark.parametrize(
    "table, match",
    [
        ({"ASR": []}, r"p\.json: ASR: expected a non-empty list"),
        ({"ASR": {"en": ["ok", ""]}}, r"p\.json: ASR\.en\[1\]: expected a non-empty text"),
        ({"ASR": ["<audio> and <audio>"]}, r"ASR\[0\]: more than one <audio>"),
        ({"ASR": 3}, r"ASR: expected a list of texts"),
        ([], r"expected a JSON object"),
    ],
)
def test_bad_prompt_files(tmp_path, table, match):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=match):
        PromptBank.load(path)


def test_stable_rng_independent_of_process_hash():
    a = stable_rng(1, "x", 3).integers(1 << 30, size=4)
    b = stable_rng(1, "x", 3).integers(1 << 30, size=4)
    c = stable_rng(1, "x", 4).integers(1 << 30, size=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ----------------------------------------------------------------------------- prompt layouts


def test_original_layout_audio_first_fixed_instruction():
    bank = PromptBank({"ASR": ["Transcribe.", "Write it down."], "SQA": ["Answer the question."]})
    p = Prompter(bank, "original")
    row = {"transcript": "x"}
    turns = {p.user_turn(get_task("ASR"), row, rng=stable_rng(1, "u", e)) for e in range(10)}
    assert turns == {"<audio>\nTranscribe."}  # one fixed instruction even in training
    sqa = {"question": "Who won?\n<audio>", "answer": "Ann"}
    assert p.user_turn(get_task("SQA"), sqa) == "<audio>\nAnswer the question. Who won?"
    # sampling is an option of its own
    random = Prompter(bank, "original", "random")
    turns = {random.user_turn(get_task("ASR"), row, rng=stable_rng(1, "u", e)) for e in range(10)}
    assert turns == {"<audio>\nTranscribe.", "<audio>\nWrite it down."}
    assert random.user_turn(get_task("ASR"), row) == "<audio>\nTranscribe."  # no rng (eval): fixed


def test_instruction_first_layout_is_the_previous_one():
    bank = PromptBank({"ASR": ["Transcribe.", "Write it down."], "SQA": ["Answer the question."]})
    p = Prompter(bank, "instruction_first")
    assert p.instruction_sampling == "random"
    assert p.user_turn(get_task("ASR"), {}) == "Transcribe.\n<audio>"
    assert p.user_turn(get_task("SQA"), {"question": "Who won?\n<audio>"}) == "Who won?\n<audio>"
    assert p.user_turn(get_task("SQA"), {"question": "Who won?"}) == "Answer the question.\nWho won?\n<audio>"
    given = {"prompt": "<audio> Describe the voice.", "target": "calm"}
    assert p.user_turn(get_task("INSTRUCT"), given) == "<audio> Describe the voice."
    assert Prompter(bank, "original").user_turn(get_task("INSTRUCT"), given) == "<audio>\nDescribe the voice."


def test_unknown_layout_and_sampling_name_the_flag():
    assert list(PROMPT_FORMATS) == ["original", "instruction_first"]
    assert get_prompt_format("original").system_prompt == PAPER_SYSTEM_PROMPT
    with pytest.raises(
        ValueError, match=r"--prompt_format 'paper': unknown prompt format; known: \['original'"
    ):
        Prompter(PromptBank.load(), "paper")
    with pytest.raises(ValueError, match=r"--instruction_sampling 'sometimes'"):
        Prompter(PromptBank.load(), "original", "sometimes")


def test_system_prompt_text_file_default_and_none(tmp_path):
    assert resolve_system_prompt(None, "original") == PAPER_SYSTEM_PROMPT
    assert resolve_system_prompt(None, "instruction_first") is None
    assert resolve_system_prompt("none", "original") is None and resolve_system_prompt("", "original") is None
    assert resolve_system_prompt("You are terse.") == "You are terse."
    f = tmp_path / "system.txt"
    f.write_text("  From a file.\n")
    assert resolve_system_prompt(str(f)) == "From a file."
    with pytest.raises(ValueError, match=r"--system_prompt .*missing\.txt: file not found"):
        resolve_system_prompt(str(tmp_path / "missing.txt"))


def test_shipped_prompts_cover_every_task_without_a_row_instruction():
    bank = PromptBank.load()
    Prompter(bank).check_tasks([get_task(n) for n in ("ASR", "ST", "SQA", "META", "INSTRUCT")])
    for task in ("SQA", "META"):  # the paper's layout adds the question after the instruction
        assert all("{question}" not in t for t in bank.instructions(task))
    with pytest.raises(ConfigError, match="no instructions for task 'META'"):
        Prompter(PromptBank({"ASR": ["x"]})).check_tasks([get_task("META")])


def test_prompt_settings_precedence():
    from llava.dataset.prompts import resolve_prompt_settings

    s = resolve_prompt_settings()
    assert (s.prompt_format, s.system_prompt, s.instruction_sampling) == (
        "original",
        PAPER_SYSTEM_PROMPT,
        "fixed",
    )
    s = resolve_prompt_settings(config_format="instruction_first")
    assert (s.prompt_format, s.system_prompt, s.instruction_sampling) == ("instruction_first", None, "random")
    s = resolve_prompt_settings("original", "none", "random", config_format="instruction_first")
    assert (s.prompt_format, s.system_prompt, s.instruction_sampling) == ("original", None, "random")
