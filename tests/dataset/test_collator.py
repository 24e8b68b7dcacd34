from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from llava.constants import IGNORE_INDEX
from llava.dataset.collator import SpeechCollator
from llava.dataset.skips import SkippedRow
from llava.demo.base_models.tokenizer import train_bpe_tokenizer
from llava.tokenization import add_audio_token


def n_tokens(num_samples: int) -> int:
    """A stand-in for the model's rule: one LLM position per 0.1 s, at least one."""
    return max(1, int(num_samples) // 1600)


@pytest.fixture
def tok(tiny_tokenizer):
    add_audio_token(tiny_tokenizer)
    return tiny_tokenizer


def _sample(
    i: int, seconds: float, target: str = "the quick brown fox", prompt: str = "transcribe the audio\n<audio>"
):
    rng = np.random.default_rng(i)
    return {
        "id": f"s{i}",
        "task": "ASR",
        "audio": rng.standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1,
        "prompt": prompt,
        "target": target,
        "transcript": target,
        "word_boundaries": None,
        "duration": seconds,
    }


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chat_labels_exactly_target_and_eot(tok):
    samples = [_sample(0, 1.0, "the lazy dog"), _sample(1, 0.45, "one two three four five six")]
    batch = SpeechCollator(tok, n_tokens, max_length=512)(samples)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    for row, s in enumerate(samples):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        labels = batch["labels"][row][batch["attention_mask"][row].bool()].tolist()
        expected = _ids(tok, s["target"]) + [eot]
        labelled = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
        # one contiguous run at the very end of the sequence: target tokens + end of turn, nothing after
        assert labelled == list(range(len(ids) - len(expected), len(ids)))
        assert [labels[i] for i in labelled] == expected == ids[-len(expected) :]
        # the unlabelled prefix is exactly the generation prompt (audio expanded)
        prefix = tok.apply_chat_template(
            [{"role": "user", "content": s["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        prefix_ids = _ids(tok, prefix)
        audio_id = tok.convert_tokens_to_ids("<audio>")
        slot = prefix_ids.index(audio_id)
        n = n_tokens(len(s["audio"]))
        expanded = prefix_ids[:slot] + [audio_id] * n + prefix_ids[slot + 1 :]
        assert ids[: len(ids) - len(expected)] == expanded


def test_audio_runs_values_and_padding(tok):
    samples = [_sample(0, 0.3), _sample(1, 1.2), _sample(2, 0.7)]
    batch = SpeechCollator(tok, n_tokens)(samples)
    audio_id = tok.convert_tokens_to_ids("<audio>")
    assert (
        batch["audio_values"].shape == (3, int(1.2 * 16000)) and batch["audio_values"].dtype == torch.float32
    )
    assert batch["audio_lengths"].tolist() == [len(s["audio"]) for s in samples]
    assert batch["audio_sample_idx"].tolist() == [0, 1, 2]
    for row, s in enumerate(samples):
        ids = batch["input_ids"][row]
        pos = (ids == audio_id).nonzero().flatten()
        assert len(pos) == n_tokens(len(s["audio"]))
        assert (pos.diff() == 1).all()  # one contiguous run
        n = len(s["audio"])
        np.testing.assert_array_equal(batch["audio_values"][row, :n].numpy(), s["audio"])
        assert (batch["audio_values"][row, n:] == 0).all()
        # right padding: real tokens first, then pad / mask 0 / label -100
        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (ids[length:] == tok.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    for key in ("input_ids", "attention_mask", "labels", "audio_lengths", "audio_sample_idx"):
        assert batch[key].dtype == torch.long
    assert batch["skipped"] == {}


def test_transcript_tokens(tok):
    samples = [_sample(0, 0.5, "the sun"), _sample(1, 0.5, "a small cat sleeps on the mat")]
    batch = SpeechCollator(tok, n_tokens, with_transcript=True)(samples)
    for row, s in enumerate(samples):
        expected = _ids(tok, s["transcript"])
        n = int(batch["text_attention_mask"][row].sum())
        assert batch["text_input_ids"][row, :n].tolist() == expected
        assert (batch["text_input_ids"][row, n:] == tok.pad_token_id).all()
    bad = _sample(2, 0.5)
    bad["transcript"] = None
    with pytest.raises(ValueError, match="s2: with_transcript needs a non-empty transcript"):
        SpeechCollator(tok, n_tokens, with_transcript=True)([bad])


def test_inference_left_padding_and_ids(tok):
    samples = [_sample(0, 0.3), _sample(1, 1.0)]
    batch = SpeechCollator(tok, n_tokens, inference=True)(samples)
    assert "labels" not in batch and batch["ids"] == ["s0", "s1"]
    assert [m["target"] for m in batch["meta"]] == [s["target"] for s in samples]
    assert batch["meta"][0]["task"] == "ASR" and "audio" not in batch["meta"][0]
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # left padded: every row ends at the last column
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": samples[1]["prompt"]}], tokenize=False, add_generation_prompt=True
    )
    assert _ids(tok, prefix)[-3:] == batch["input_ids"][1, -3:].tolist()  # ends with the assistant header
    right = SpeechCollator(tok, n_tokens, inference=True, padding_side="right")(samples)
    assert right["attention_mask"][:, 0].all()


def test_none_samples_dropped_and_reported(tok):
    batch = SpeechCollator(tok, n_tokens)([None, _sample(0, 0.4), None])
    assert batch["input_ids"].shape[0] == 1 and batch["skipped"] == {"bad_audio": 2}
    assert batch["audio_sample_idx"].tolist() == [0]
    empty = SpeechCollator(tok, n_tokens)([None])
    assert empty["input_ids"].shape == (0, 0) and empty["audio_values"].shape[0] == 0
    assert batch["skipped_rows"] == [] and empty["skipped_rows"] == []  # no id to report


def test_skipped_row_markers_dropped_and_reported_with_their_ids(tok):
    bad = SkippedRow("src:7", "non_finite_audio", "src")
    batch = SpeechCollator(tok, n_tokens)([bad, _sample(0, 0.4), None, bad])
    assert batch["input_ids"].shape[0] == 1 and batch["audio_sample_idx"].tolist() == [0]
    assert batch["skipped"] == {"non_finite_audio": 2, "bad_audio": 1}  # this batch's drops, per item
    assert batch["skipped_rows"] == [bad, bad]  # the consumer counts ids once


@pytest.mark.parametrize(
    "prompt, match",
    [
        # samples are validated when made: a prompt must carry exactly one <audio>
        ("no placeholder here", r"prompt: holds 0 <audio> placeholder\(s\)"),
        ("<audio> and <audio>", r"prompt: holds 2 <audio> placeholder\(s\)"),
    ],
)
def test_placeholder_count_mismatch(tok, prompt, match):
    with pytest.raises(ValueError, match=match):
        SpeechCollator(tok, n_tokens)([_sample(0, 0.5, prompt=prompt)])


def test_truncation_and_overflow(tok):
    long_target = " ".join(["one two three four five six seven eight nine ten"] * 10)
    s = _sample(0, 1.0, long_target)
    full = SpeechCollator(tok, n_tokens, max_length=4096)([s])
    n_full = int(full["attention_mask"].sum())
    prompt_len = int((full["labels"][0] == IGNORE_INDEX).sum())
    cut = SpeechCollator(tok, n_tokens, max_length=prompt_len + 5)([s])
    assert cut["input_ids"].shape[1] == prompt_len + 5 < n_full
    assert cut["input_ids"][0].tolist() == full["input_ids"][0, : prompt_len + 5].tolist()
    assert int((cut["labels"][0] != IGNORE_INDEX).sum()) == 5
    # the prompt and its audio do not fit: dropped and counted, or an error
    dropped = SpeechCollator(tok, n_tokens, max_length=prompt_len)([s, _sample(1, 0.1, "the sun")])
    assert dropped["input_ids"].shape[0] == 1 and dropped["skipped"] == {"exceeds_max_length": 1}
    assert dropped["skipped_rows"] == [SkippedRow("s0", "exceeds_max_length")]
    assert dropped["audio_values"].shape[0] == 1 and dropped["audio_sample_idx"].tolist() == [0]
    with pytest.raises(ValueError, match="s0: prompt \\+ audio take"):
        SpeechCollator(tok, n_tokens, max_length=prompt_len, on_overflow="error")([s])


def _mixed_sample(tok) -> dict:
    s = _sample(0, 1.0)
    rng = np.random.default_rng(0)
    s["segments"] = [
        ("text", "the quick brown fox"),
        ("audio", rng.standard_normal(4800).astype(np.float32)),
        ("text", "over the lazy dog"),
        ("audio", rng.standard_normal(8000).astype(np.float32)),
    ]
    return s


def test_mixed_mode_labels(tok):
    s = _mixed_sample(tok)
    batch = SpeechCollator(tok, n_tokens, mode="mixed")([s])
    audio_id = tok.convert_tokens_to_ids("<audio>")
    t1, t2 = _ids(tok, "the quick brown fox"), _ids(tok, " over the lazy dog")
    expected_ids = [tok.bos_token_id] + t1 + [audio_id] * 3 + t2 + [audio_id] * 5 + [tok.eos_token_id]
    expected_labels = [IGNORE_INDEX] + t1 + [IGNORE_INDEX] * 3 + t2 + [IGNORE_INDEX] * 5 + [tok.eos_token_id]
    assert batch["input_ids"][0].tolist() == expected_ids
    assert batch["labels"][0].tolist() == expected_labels
    assert batch["audio_lengths"].tolist() == [4800, 8000] and batch["audio_sample_idx"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="mixed mode needs `segments`"):
        SpeechCollator(tok, n_tokens, mode="mixed")([_sample(1, 0.5)])


def test_mixed_truncation_never_cuts_audio_run(tok):
    s = _mixed_sample(tok)
    t1 = _ids(tok, "the quick brown fox")
    # the cut would land inside the second audio run: it moves back before it and drops that segment
    full_len = 1 + len(t1) + 3 + len(_ids(tok, " over the lazy dog"))
    batch = SpeechCollator(tok, n_tokens, mode="mixed", max_length=full_len + 2)([s])
    audio_id = tok.convert_tokens_to_ids("<audio>")
    assert batch["input_ids"].shape[1] == full_len
    assert int((batch["input_ids"] == audio_id).sum()) == 3 and batch["audio_lengths"].tolist() == [4800]
    # inside the first run: keeps only the leading text
    batch = SpeechCollator(tok, n_tokens, mode="mixed", max_length=1 + len(t1) + 1)([s])
    assert batch["input_ids"].shape[1] == 1 + len(t1) and batch["audio_values"].shape[0] == 0


def test_prefix_mismatch_raises(tok):
    odd = copy.deepcopy(tok)
    # the generation prompt differs from how the assistant turn is rendered: labels cannot be placed
    odd.chat_template = (
        "{{- bos_token }}{%- for m in messages %}{{- m['role'] + ': ' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- 'ASSISTANT >> ' }}{%- endif %}"
    )
    with pytest.raises(ValueError, match="is not a prefix"):
        SpeechCollator(odd, n_tokens)([_sample(0, 0.5)])


def test_constructor_checks():
    plain = train_bpe_tokenizer(["a b c d e f"] * 3, vocab_size=300)
    with pytest.raises(ValueError, match="add_audio_token"):
        SpeechCollator(plain, n_tokens)
    add_audio_token(plain)
    with pytest.raises(ValueError, match="unknown collator mode"):
        SpeechCollator(plain, n_tokens, mode="speech")
    with pytest.raises(ValueError, match="inference batches are only built in chat mode"):
        SpeechCollator(plain, n_tokens, mode="mixed", inference=True)


def test_paper_layout_system_turn_is_never_labelled(tok):
    from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
    from llava.dataset.sample import Sample

    s = Sample.from_mapping(_sample(3, 0.5, "the lazy dog", prompt="<audio>\nTranscribe the audio."))
    batch = SpeechCollator(tok, n_tokens, system_prompt=PAPER_SYSTEM_PROMPT)([s])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert [x for x in labels if x != IGNORE_INDEX] == _ids(tok, "the lazy dog") + [eot]
    prefix = tok.apply_chat_template(
        [{"role": "system", "content": PAPER_SYSTEM_PROMPT}, {"role": "user", "content": s.prompt}],
        tokenize=False,
        add_generation_prompt=True,
    )
    # the sequence starts with exactly that rendering, the single <audio> expanded to its run
    expected = _ids(tok, prefix)
    audio_id = tok.convert_tokens_to_ids("<audio>")
    slot = expected.index(audio_id)
    run = [audio_id] * n_tokens(len(s.audio))
    assert ids[: len(expected) - 1 + len(run)] == expected[:slot] + run + expected[slot + 1 :]
    meta = SpeechCollator(tok, n_tokens, inference=True)([s])["meta"][0]
    assert meta["source_lang"] is None and meta["references"] == ["the lazy dog"]


def test_remembered_prompt_ids_equal_a_fresh_rendering(tok, monkeypatch):
    """A collator renders each distinct prompt once and each (prompt, target) chat once; later batches
    (other targets and audio, a changed system turn, repeated samples, inference) get exactly what a
    fresh collator builds, and the memos stay bounded."""
    import llava.dataset.collator as collator_mod

    monkeypatch.setattr(collator_mod, "PROMPT_MEMO_SIZE", 2)
    monkeypatch.setattr(collator_mod, "SAMPLE_MEMO_SIZE", 3)
    prompts = ["transcribe the audio\n<audio>", "<audio>\ntranslate the audio", "what does <audio> say"]
    samples = [
        _sample(i, 0.3 + 0.1 * i, "the lazy dog" if i % 2 else "one two", prompts[i % 3]) for i in range(7)
    ]
    reused = SpeechCollator(tok, n_tokens, max_length=512, with_transcript=True)
    for system in (None, "be brief", None):
        reused.system_prompt = system
        for batch in (samples[:3], samples[3:], samples[:3]):
            got = reused(batch)
            want = SpeechCollator(tok, n_tokens, max_length=512, system_prompt=system, with_transcript=True)(batch)  # fmt: skip
            assert got.keys() == want.keys()
            for key in ("input_ids", "labels", "attention_mask", "text_input_ids", "text_attention_mask"):
                assert torch.equal(got[key], want[key])
    # bounded: the third prompt, the other system turns and further samples re-render
    assert len(reused._prompt_ids) == 2 and len(reused._chat_ids) == 3 and len(reused._transcript_memo) == 2
    prompt_renders, chat_renders = [], []
    real = tok.apply_chat_template

    def counting(*args, **kwargs):
        (prompt_renders if kwargs.get("add_generation_prompt") else chat_renders).append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tok, "apply_chat_template", counting)
    fresh = SpeechCollator(tok, n_tokens, max_length=512)
    fresh(samples[:2])
    fresh(samples[:2])
    assert len(prompt_renders) == 2  # each prompt once, not once per sample
    assert len(chat_renders) == 2  # each sample's chat once, not once per epoch
    inference = SpeechCollator(tok, n_tokens, inference=True)
    first = inference(samples[:1])["input_ids"]
    assert torch.equal(inference(samples[:1])["input_ids"], first)  # the memo is not mutated by expansion
