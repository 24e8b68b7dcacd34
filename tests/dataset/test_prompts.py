from __future__ import annotations

import json

import numpy as np
import pytest

from llava.constants import AUDIO_TOKEN
from llava.dataset.config import ConfigError
from llava.dataset.prompts import PromptBank, attach_audio
from llava.dataset.seeding import stable_rng


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
