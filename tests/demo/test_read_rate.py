from __future__ import annotations

import pytest

from llava.demo import read_rate as rr
from llava.demo.base_models.chats import TaskText


def test_repeated_writes_every_word_k_times_and_keeps_the_target():
    item = TaskText("ASR", "the cat sleeps", "the cat sleeps")
    assert rr.repeated(item, 1) == item
    out = rr.repeated(item, 3)
    assert out.content == "the the the cat cat cat sleeps sleeps sleeps"
    assert out.target == "the cat sleeps" and out.task == "ASR"


def test_read_rate_scores_each_rate_on_the_asr_items(monkeypatch, tiny_base_dirs, capsys):
    _, llm = tiny_base_dirs
    items = [TaskText("ASR", "a b", "a b"), TaskText("ST", "a b", "x y"), TaskText("ASR", "c", "c")]
    monkeypatch.setattr(rr, "split_task_texts", lambda corpus, split: items)
    seen = []

    def fake_topline(model, tokenizer, chosen):
        seen.append([it.content for it in chosen])
        return {"ASR": {"paper_wer": 10.0 * len(seen), "example": {"hyp": "h"}}}

    monkeypatch.setattr(rr, "text_topline", fake_topline)
    out = rr.read_rate(llm, "corpus", [1, 2], n=5)
    assert seen == [["a b", "c"], ["a a b b", "c c"]]  # ST items are not scored
    assert out[1]["paper_wer"] == 10.0 and out[2]["paper_wer"] == 20.0
    assert rr.main(["--llm", str(llm), "--corpus", "c", "--repeats", "1,2"]) == 0
    printed = capsys.readouterr().out
    assert "| 1x | 30.0 | h |" in printed and "| 2x | 40.0 | h |" in printed  # the 3rd and 4th scorings
    with pytest.raises(SystemExit):
        rr.main(["--llm", str(llm), "--corpus", "c", "--repeats", "0"])
