from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from llava.dataset.prompts import PromptBank
from llava.demo.base_models import chats
from llava.demo.base_models.chats import (
    SYSTEM_PROMPT,
    TaskText,
    eval_conversations,
    instructions,
    read_task_texts,
    text_topline,
    training_conversations,
    user_turn,
)

PROMPTS = PromptBank(
    {
        "ASR": {"en": ["Transcribe the audio.", "<audio>\nRepeat what is said."]},
        "ST": {"en": ["Translate the audio into {target_language}."]},
        "SQA": {"en": ["Listen to the audio and answer the question.\n{question}", "{question}\n<audio>"]},
    }
)
PASSAGE = "Ana is a cook who lives in Rome. Ana has a black cat called Leo."
ITEMS = [
    TaskText("ASR", "The cat sleeps.", "The cat sleeps."),
    TaskText("ST", "The cat sleeps.", "Die Katze schläft."),
    TaskText("SQA", PASSAGE, "Leo", "What is the name of the cat?"),
]


def test_read_task_texts(tmp_path):
    path = tmp_path / "lm_tasks.jsonl"
    records = [
        {"kind": "pair", "en": "A dog runs.", "de": "Ein Hund rennt."},
        {"kind": "passage", "context": PASSAGE, "qas": [["Where does Ana live?", "Rome"], ["Who?", "Ana"]]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    items = read_task_texts(path)
    assert items == [
        TaskText("ASR", "A dog runs.", "A dog runs."),
        TaskText("ST", "A dog runs.", "Ein Hund rennt."),
        TaskText("SQA", PASSAGE, "Rome", "Where does Ana live?"),
        TaskText("SQA", PASSAGE, "Ana", "Who?"),
    ]
    path.write_text(json.dumps({"kind": "poem"}) + "\n")
    with pytest.raises(ValueError, match=r"lm_tasks.jsonl:1: unknown record kind 'poem'"):
        read_task_texts(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_task_texts(tmp_path / "missing.jsonl")


def test_instructions_drop_placeholders():
    assert instructions(PROMPTS, "ASR") == ["Transcribe the audio.", "Repeat what is said."]
    assert instructions(PROMPTS, "ST") == ["Translate the audio into German."]
    assert instructions(PROMPTS, "SQA") == ["Listen to the audio and answer the question.", ""]


def test_user_turn_layouts():
    asr, st, sqa = ITEMS
    # The paper's layout: what the audio says first, then the instruction (SQA: and the question).
    assert user_turn(asr, "original", PROMPTS) == "The cat sleeps.\nTranscribe the audio."
    assert user_turn(st, "original", PROMPTS) == "The cat sleeps.\nTranslate the audio into German."
    assert (
        user_turn(sqa, "original", PROMPTS)
        == PASSAGE + "\nListen to the audio and answer the question. What is the name of the cat?"
    )
    # Instruction first: where prompts.json puts <audio> (appended when the text has none).
    assert user_turn(asr, "instruction_first", PROMPTS) == "Transcribe the audio.\nThe cat sleeps."
    assert user_turn(asr, "instruction_first", PROMPTS, 1) == "The cat sleeps.\nRepeat what is said."
    assert user_turn(sqa, "instruction_first", PROMPTS, 1) == "What is the name of the cat?\n" + PASSAGE
    with pytest.raises(ValueError, match="unknown prompt layout 'sideways'"):
        user_turn(asr, "sideways", PROMPTS)


def test_training_conversations_cover_instructions_and_layouts():
    convs = training_conversations(ITEMS * 40, PROMPTS, np.random.default_rng(0), copies=2)
    assert len(convs) == 240
    users = {c[-2]["content"] for c in convs}
    for item in ITEMS:
        for layout in chats.LAYOUTS:
            for choice in range(len(instructions(PROMPTS, item.task))):
                assert user_turn(item, layout, PROMPTS, choice) in users
    for conv in convs:
        assert conv[-1]["role"] == "assistant" and conv[-2]["role"] == "user"
        assert conv[-1]["content"] in {it.target for it in ITEMS}
        if conv[0]["role"] == "system":
            assert conv[0]["content"] == SYSTEM_PROMPT
    # Both with and without the system turn; the paper's layout always has it.
    assert {len(c) for c in convs} == {2, 3}
    assert all(
        len(c) == 3 for c in convs if c[-2]["content"] in {user_turn(it, "original", PROMPTS) for it in ITEMS}
    )
    again = training_conversations(ITEMS * 40, PROMPTS, np.random.default_rng(0), copies=2)
    assert again == convs


def test_eval_conversations_are_the_study_prompts():
    convs = eval_conversations(ITEMS, PROMPTS)
    assert convs[2] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_turn(ITEMS[2], "original", PROMPTS)},
    ]


def test_text_topline_scores_replies(monkeypatch):
    items = [
        TaskText("ASR", "the cat sleeps", "the cat sleeps"),
        TaskText("ASR", "a dog runs home", "a dog runs home"),
        TaskText("SQA", PASSAGE, "Leo", "What is the name of the cat?"),
        TaskText("SQA", PASSAGE, "a black cat", "Which animal?"),
    ]
    canned = {
        "the cat sleeps": "the cat sleeps",
        "a dog runs home": "a dog ran home",  # 1 substitution in 4 words
        "What is the name of the cat?": "Leo.",  # exact after normalisation
        "Which animal?": "black dog",  # 1 shared token of 2 (pred) / 2 (gold, article dropped)
    }
    seen = []

    def fake_generate(model, tokenizer, conversations, max_new_tokens=64):
        seen.extend(conversations)
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            out.append(next(v for k, v in canned.items() if k in user))
        return out

    monkeypatch.setattr("llava.demo.base_models.llm.generate_replies", fake_generate)
    result = text_topline(None, None, items, PROMPTS)
    assert result["ASR"]["paper_wer"] == pytest.approx(100 * (0 + 1 / 4) / 2)
    assert result["SQA"]["exact_match"] == pytest.approx(50.0)
    assert result["SQA"]["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert "ST" not in result
    assert all(c[0]["content"] == SYSTEM_PROMPT for c in seen)


def test_scrambled_items_are_word_permutations_of_asr_items():
    from llava.demo.base_models.chats import scrambled_items

    items = [TaskText("ASR", "the old man reads a book", "the old man reads a book"), *ITEMS]
    out = scrambled_items(items, np.random.default_rng(3), per_item=3)
    assert len(out) == 3 * 2  # the two ASR items, three each; ST and SQA items give none
    for item in out:
        assert item.task == "ASR" and item.content == item.target
    assert sorted(out[0].content.split()) == sorted("the old man reads a book".split())
    assert len({it.content for it in out[:3]}) > 1  # each its own permutation
    assert scrambled_items(items, np.random.default_rng(3), per_item=3) == out


def test_stretched_repeats_each_word_in_order_and_keeps_the_target():
    from llava.demo.base_models.chats import stretched

    item = TaskText("ST", "the old man reads a book", "der alte Mann liest ein Buch")
    out = stretched(item, np.random.default_rng(1), max_repeat=3)
    assert out.target == item.target and out.task == "ST" and out.question is None
    words = out.content.split()
    collapsed = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    assert collapsed == item.content.split()  # no adjacent duplicates in the source sentence
    runs = [len(list(g)) for _, g in itertools.groupby(words)]
    assert max(runs) <= 3 and min(runs) >= 1
    seen = {len(stretched(item, np.random.default_rng(s), 3).content.split()) for s in range(20)}
    assert len(seen) > 1 and max(seen) > len(item.content.split())


def test_training_conversations_stretch_a_share_of_inputs():
    items = [TaskText("ASR", "one two three four five", "one two three four five")] * 400
    convs = training_conversations(items, PROMPTS, np.random.default_rng(0), stretch_frac=0.5, stretch_max=2)
    users = [c[-2]["content"] for c in convs]
    share = sum("one two three four five" not in u for u in users) / len(users)
    # A stretched input stays unchanged when every word happens to be drawn once (1/32 here).
    assert 0.5 * (1 - 1 / 32) - 0.07 < share < 0.5 + 0.07
    assert all(c[-1]["content"] == "one two three four five" for c in convs)
    plain = training_conversations(items, PROMPTS, np.random.default_rng(0))
    assert all("one two three four five" in c[-2]["content"] for c in plain)


def test_spelled_writes_letters_and_word_gaps_and_keeps_the_target():
    from llava.demo.base_models.chats import spelled

    item = TaskText("ASR", "The cat's 2 mats.", "The cat's 2 mats.")
    out = spelled(item, np.random.default_rng(0), repeat_p=0.0)
    # Letters only, lower case, as the character CTC transcripts: "'", digits and "." dropped.
    assert out.content == "t h e | c a t | s | m a t s"
    assert out.target == item.target and out.task == "ASR" and out.question is None
    doubled = spelled(item, np.random.default_rng(0), repeat_p=1.0).content.split()
    assert doubled == [t for t in out.content.split() for _ in range(2)]
    # Some letters doubled at 0.3, and dropping the doubles (no letter repeats in these words) gives back
    # the plain spelling.
    some = spelled(TaskText("ASR", "the old man reads", "x"), np.random.default_rng(3), 0.3).content.split()
    assert 0 < len(some) - len("t h e | o l d | m a n | r e a d s".split()) < len(some) / 2
    collapsed = [t for i, t in enumerate(some) if i == 0 or t != some[i - 1]]
    assert " ".join(collapsed) == "t h e | o l d | m a n | r e a d s"


def test_passage_sentence_items_repeat_each_distinct_passage_sentence():
    passage = "Karl works as a driver in Paris. Karl likes fish!  Is Karl tall? Karl keeps a hat."
    items = [
        chats.TaskText("SQA", passage, "Paris", "Where does Karl work?"),
        chats.TaskText("SQA", passage, "fish", "What does Karl like?"),  # same passage, another question
        chats.TaskText("ASR", "A fox watches sheep.", "A fox watches sheep."),
    ]
    out = chats.passage_sentence_items(items, per_sentence=2)
    sentences = ["Karl works as a driver in Paris.", "Karl likes fish!", "Is Karl tall?", "Karl keeps a hat."]
    assert [it.content for it in out] == [s for s in sentences for _ in range(2)]
    assert all(it.task == "ASR" and it.target == it.content and it.question is None for it in out)
    assert chats.passage_sentence_items(items[2:]) == []  # no passage, no items


def test_passage_sentence_items_openings_only_takes_each_passages_first_sentence():
    items = [
        chats.TaskText("SQA", "Karl works as a driver in Paris. Karl likes fish.", "Paris", "Where?"),
        chats.TaskText("SQA", "Karl works as a driver in Paris. Karl keeps a hat.", "hat", "What?"),
        chats.TaskText("SQA", "Eva is a nurse who lives in Rome. Eva likes tea.", "Rome", "Where?"),
    ]
    out = chats.passage_sentence_items(items, openings_only=True)
    assert [it.content for it in out] == [
        "Karl works as a driver in Paris.",
        "Eva is a nurse who lives in Rome.",
    ]
    assert len(chats.passage_sentence_items(items)) == 5
