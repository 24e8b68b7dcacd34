"""Batch inference by task (`python -m llava.inference`): counts, resume, fingerprint, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

import llava.inference.__main__ as cli
import llava.inference.runner as runner


@pytest.fixture
def clips(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(d / f"c{i}.wav", (0.1 * rng.standard_normal(4000 + 3000 * i)).astype(np.float32), 16000)
    (d / "c9.wav").write_bytes(b"RIFF broken")
    (d / "notes.txt").write_text("not audio")
    return d


def _run(ckpt, out, *inputs, extra=()):
    return cli.main(
        ["--model-path", str(ckpt), "--task", "asr", "--audios", *map(str, inputs), "--out", str(out)]
        + ["--max-new-tokens", "5", "--batch-size", "2", "--no-progress", *extra]
    )


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_directory_inference_counts_failures_and_resumes(
    tiny_checkpoint, clips, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "preds.jsonl"
    assert _run(tiny_checkpoint, out, clips) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["files"] == 6 and summary["predicted"] == 5
    assert summary["failed"] == {"undecodable_audio": 1} and summary["not_audio"] == {".txt": 1}
    lines = _lines(out)
    assert [x["id"] for x in lines] == [f"{clips}/c{i}.wav" for i in (0, 1, 2, 3, 4, 9)]
    assert lines[-1]["failed"] == "undecodable_audio" and lines[-1]["prediction"] == ""
    assert all(x["task"] == "ASR" and "failed" not in x for x in lines[:5])
    assert len({x["prediction"] for x in lines[:5]}) > 1
    full = out.read_text()

    # Killed after the first batch, then resumed: the same file.
    resumed = tmp_path / "resumed.jsonl"
    real, calls = runner.generate_batch, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_checkpoint, resumed, clips)
    monkeypatch.setattr(runner, "generate_batch", real)
    assert len(_lines(resumed)) == 2
    _run(tiny_checkpoint, resumed, clips)
    assert [{**x, "audio_stamp": None} for x in _lines(resumed)] == [
        {**x, "audio_stamp": None} for x in _lines(out)
    ]

    # Only new or changed files are done again.
    generated = []
    monkeypatch.setattr(
        runner, "generate_batch", lambda m, t, b, *a: generated.extend(b["ids"]) or real(m, t, b, *a)
    )
    sf.write(clips / "c5.wav", np.zeros(8000, dtype=np.float32) + 0.01, 16000)
    os.utime(clips / "c0.wav", ns=(1, 1))
    _run(tiny_checkpoint, out, clips)
    assert sorted(generated) == [f"{clips}/c0.wav", f"{clips}/c5.wav"]
    assert out.read_text().startswith(full.splitlines()[0].split('"audio_stamp"')[0])
    assert len(_lines(out)) == 7


def test_resume_under_other_settings_is_refused(tiny_checkpoint, clips, tmp_path):
    out = tmp_path / "p.jsonl"
    _run(tiny_checkpoint, out, clips / "c0.wav")
    with pytest.raises(ValueError, match=r"changed: settings\.generation\.num_beams.*--overwrite"):
        _run(tiny_checkpoint, out, clips / "c0.wav", extra=["--num-beams", "2"])
    assert _run(tiny_checkpoint, out, clips / "c0.wav", extra=["--num-beams", "2", "--overwrite"]) == 0


def test_beam_search_is_the_same_at_batch_1_and_4(tiny_checkpoint, clips, tmp_path):
    beams = ["--num-beams", "3", "--length-penalty", "0.7"]
    _run(tiny_checkpoint, tmp_path / "b1.jsonl", clips, extra=[*beams, "--batch-size", "1"])
    _run(tiny_checkpoint, tmp_path / "b4.jsonl", clips, extra=[*beams, "--batch-size", "4"])
    one, four = _lines(tmp_path / "b1.jsonl"), _lines(tmp_path / "b4.jsonl")
    assert [x["prediction"] for x in one] == [x["prediction"] for x in four]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "summarise"], "unknown task 'SUMMARISE'; known tasks"),
        (["--task", "st"], "--target-lang is required by task ST"),
        (["--task", "sqa"], "--question is required by task SQA"),
        (["--task", "asr", "--question", "why?"], "--question: task ASR asks no question"),
        (["--prompt-format", "chatml"], "--prompt_format 'chatml'"),
        (["--num-beams", "0"], "--num-beams"),
    ],
)
def test_bad_input_fails_before_the_model_loads(tiny_checkpoint, clips, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(cli, "load_model_from_args", lambda a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match=message):
        _run(tiny_checkpoint, tmp_path / "p.jsonl", clips, extra=args)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="empty: no audio files"):
        _run(tiny_checkpoint, tmp_path / "p.jsonl", empty)
