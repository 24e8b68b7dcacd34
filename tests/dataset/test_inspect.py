from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llava.dataset.audio import encode_audio
from llava.dataset.inspect import AUDIO_INDEX, audio_token_counter, collapse_audio_runs, main, render
from llava.dataset.prompts import PAPER_SYSTEM_PROMPT, PromptBank
from tests.helpers import TINY_PROJECTOR_FLAGS, write_asr_config

SR = 16000


def test_collapse_and_render():
    a, ign = 99, -100
    ids = [1, 2, a, a, a, 3, 4, a, a, 5, 6]
    labels = [ign, ign, ign, ign, ign, 3, 4, ign, ign, 5, 6]
    ids_c, labels_c = collapse_audio_runs(ids, labels, a)
    assert ids_c == [1, 2, AUDIO_INDEX, 3, 4, AUDIO_INDEX, 5, 6]
    assert labels_c == [ign, ign, ign, 3, 4, ign, 5, 6]
    text = render(lambda t: "".join(f"<{x}>" for x in t), ids_c, labels_c)
    assert text == "<1><2><audio>[[<3><4>]]<audio>[[<5><6>]]"


def _corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate((0.7, 1.3)):
        wave = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        words = ["one", "two", "three", "four", "five", "six", "seven"][: 4 + 3 * i]
        wb = [[j * seconds / len(words), (j + 1) * seconds / len(words), w] for j, w in enumerate(words)]
        rows.append(
            {
                "audio": encode_audio(wave, SR),
                "transcription": " ".join(words) + ".",
                "word_boundaries": json.dumps(wb),
                "duration": seconds,
            }
        )
    return write_asr_config(root, rows)


def _argv(base_dirs, cfg, *extra):
    enc, llm = base_dirs
    return ["--model_name_or_path", str(llm), "--audio_encoder", str(enc), "--data_config_path", str(cfg),
            "--report_to", "none", *TINY_PROJECTOR_FLAGS, *extra]  # fmt: skip


def test_counter_matches_the_model_without_loading_weights(tiny_base_dirs):
    from llava.model import build_model

    enc, llm = tiny_base_dirs
    options = {"num_queries": 3, "num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}
    count, sr = audio_token_counter(str(enc), str(llm), "qformer", options)
    model, _ = build_model(str(enc), str(llm), projector_config=options)
    assert sr == model.audio_tower.sampling_rate == SR
    for n in (400, 1600, 5333, 16000, 48123):
        assert count(n) == model.num_audio_tokens(n)
    count_mlp, _ = audio_token_counter(str(enc), str(llm), "mlp", {"stack": 5})
    assert count_mlp(16000) == -(-49 // 5)  # 49 HuBERT frames per second, stacked by 5


def test_json_lines_chat_layout(tiny_base_dirs, tmp_path, capsys):
    cfg = _corpus(tmp_path)
    assert (
        main(_argv(tiny_base_dirs, cfg, "--json", "--num_samples", "2", "--contrastive_training", "True"))
        == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [
        "MuSTC_NWP.ASR.en-de:en-de_train_processed:0",
        "MuSTC_NWP.ASR.en-de:en-de_train_processed:1",
    ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base_dirs[1]))
    for r, text in zip(records, ("one two three four.", "one two three four five six seven.")):
        assert r["task"] == "ASR" and r["input_ids"].count(AUDIO_INDEX) == 1
        assert len(r["labels"]) == len(r["input_ids"])
        labelled = [t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100]
        assert labelled == tok(text, add_special_tokens=False)["input_ids"] + [
            tok.convert_tokens_to_ids("<|eot_id|>")
        ]
        assert r["text_input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        decoded = tok.decode([t for t in r["input_ids"] if t != AUDIO_INDEX])
        assert PAPER_SYSTEM_PROMPT in decoded  # the paper's layout is the default
        instruction = PromptBank.load().instructions("ASR", source_language="en")[0]
        at = r["input_ids"].index(AUDIO_INDEX)
        assert tok.decode(r["input_ids"][at + 1 :]).startswith("\n" + instruction)  # audio first


def test_text_output_mixed_mode_without_punctuation(tiny_base_dirs, tmp_path, capsys):
    cfg = _corpus(tmp_path)
    argv = _argv(tiny_base_dirs, cfg, "--audio_nwp", "True", "--no_punctuation", "True", "--seed", "3")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "collator mode mixed" in out
    blocks = out.split("\n== ")[1:]
    assert len(blocks) == 2
    first = blocks[0].splitlines()[1]
    # under 6 words the utterance stays text: every word labelled, no audio, no punctuation
    assert "<audio>" not in first and "[[" in first and "four" in first and "." not in first
    assert "positions, 0 of them audio" in blocks[0]


def test_bad_destination(tiny_base_dirs, tmp_path):
    with pytest.raises(ValueError, match="no partition has destination 'eval'"):
        main(_argv(tiny_base_dirs, _corpus(tmp_path), "--destination", "eval"))


@pytest.mark.parametrize("special", [True, False])
def test_json_text_side_of_mixed_contrastive_has_the_objectives_form(
    tiny_base_dirs, tmp_path, capsys, special
):
    # Contrastive + mixed compares against [BOS] + transcript + EOS (the original's text side) unless
    # --mixed_contrastive_special_tokens False: --json must show what training actually feeds the loss.
    cfg = _corpus(tmp_path)
    argv = _argv(
        tiny_base_dirs, cfg, "--json", "--audio_nwp", "True", "--contrastive_training", "True",
        "--contrastive_layer", "0", "--mixed_contrastive_special_tokens", str(special),
    )  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base_dirs[1]))
    assert tok.bos_token_id is not None and tok.eos_token_id is not None
    for r, text in zip(records, ("one two three four.", "one two three four five six seven."), strict=True):
        plain = tok(text, add_special_tokens=False)["input_ids"]
        expected = [tok.bos_token_id, *plain, tok.eos_token_id] if special else plain
        assert r["text_input_ids"] == expected
