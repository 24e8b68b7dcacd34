from __future__ import annotations

import pytest

from llava.dataset.tasks import META_ATTRIBUTES, TASKS, get_task, task_fields


def test_registry_names_and_metrics():
    assert list(TASKS) == ["ASR", "ST", "SQA", "META", "INSTRUCT", "CLS", "REG"]
    assert get_task("META").metrics == ("asr", "st")
    assert get_task("SQA").metrics == ("sqa",)
    for name, task in TASKS.items():
        assert task.name == name


def test_unknown_task_lists_known():
    with pytest.raises(
        KeyError, match="known tasks: \\['ASR', 'ST', 'SQA', 'META', 'INSTRUCT', 'CLS', 'REG'\\]"
    ):
        get_task("XYZ")


def test_meta_target_is_the_original_speaker_description():
    row = {f: f" {f.upper()} " for f in META_ATTRIBUTES}
    assert get_task("META").target(row) == (
        "SPEAKING_RATE, GENDER, NOISE, REVERBERATION, SPEECH_MONOTONY, SDR_NOISE, PESQ_SPEECH_QUALITY"
    )


def test_sqa_target_references_and_question():
    task = get_task("SQA")
    row = {"question": "Who came?\n<audio>", "answer": [" ", "Ann", "ann smith"]}
    assert task.target(row) == "Ann"
    assert task.references(row) == ["Ann", "ann smith"]
    assert task.question(row) == "Who came?\n<audio>"
    assert get_task("ASR").references({"transcript": " hi there "}) == ["hi there"]


def test_instruct_given_instruction():
    task = get_task("INSTRUCT")
    assert (
        task.given_instruction({"prompt": "Describe the voice.\n<audio>"}) == "Describe the voice.\n<audio>"
    )
    assert task.given_instruction({"prompt": None}) is None
    assert get_task("ASR").given_instruction({"prompt": "x"}) is None


def test_task_fields_cover_every_task():
    fields = set(task_fields())
    for task in TASKS.values():
        assert set(task.required_fields) <= fields
