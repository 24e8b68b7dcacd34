"""The chat CLI driven through stdin: turns, audio switching, a bad path, reset, quit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
from llava.inference.generation import GenerationSettings
from llava.inference.prompts import PromptOptions
from llava.model import load_pretrained_model
from llava.serve import cli


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    first, second = d / "first.wav", d / "second file.flac"  # a path with a space
    sf.write(first, (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
    sf.write(second, (0.1 * rng.standard_normal(44100)).astype(np.float32), 44100)  # resampled
    return first, second


def test_piped_session(ckpt, audio_files, monkeypatch, capsys, tmp_path):
    first, second = audio_files
    script = "\n".join(
        [
            "What does the speaker say?",
            "And in German?",
            f"audio:{tmp_path / 'missing.wav'}",  # bad path: error, the session goes on
            "One more question.",
            "<reset>",
            f"Transcribe this one. audio:{second}",
            "",  # quit
            "never read",
        ]
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script + "\n"))
    args = ["--model-path", str(ckpt), "--audio", str(first), "--max-new-tokens", "4"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert out.count("ASSISTANT: ") == 4
    assert f"(loaded {first}, 0.8 s)" in out
    assert "missing.wav" in err and "cannot load audio" in err and f"still using {first}" in err
    assert "(history cleared)" in out
    assert f"(loaded {second}, 1.0 s; history cleared)" in out
    assert "never read" not in out


def test_session_history_and_audio_placement(ckpt, audio_files):
    model, tok = load_pretrained_model(ckpt)
    session = cli.ChatSession(model, tok, GenerationSettings(max_new_tokens=3))
    assert session.system_prompt == PAPER_SYSTEM_PROMPT  # the paper's layout by default
    assert session.handle("Hello there.", io.StringIO(), io.StringIO())  # no audio: text-only chat
    assert session.messages[0]["content"] == "Hello there."

    session.load_audio(str(audio_files[0]))
    assert session.messages == []
    session.ask("What is said?")
    session.ask("Say it again <audio>")  # a later placeholder is dropped: one audio per history
    users = [m["content"] for m in session.messages if m["role"] == "user"]
    assert users == ["<audio>\nWhat is said?", "Say it again"]
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
    ids = session._input_ids()
    audio_id = tok.convert_tokens_to_ids("<audio>")
    assert ids.count(audio_id) == model.num_audio_tokens(12000)
    assert PAPER_SYSTEM_PROMPT in tok.decode(ids)

    out = io.StringIO()
    assert session.handle("<reset>", out, io.StringIO()) and session.messages == []
    assert session.audio is not None  # reset keeps the audio
    assert not session.handle("   ", out, io.StringIO())  # empty message quits

    # The other layout: no system turn, the audio after the message; a placed <audio> stays put.
    first = cli.ChatSession(
        model, tok, GenerationSettings(max_new_tokens=2), PromptOptions("instruction_first")
    )
    first.load_audio(str(audio_files[0]))
    first.ask("What is said?")
    assert first.system_prompt is None and first.messages[0]["content"] == "What is said?\n<audio>"
    first.reset()
    first.ask("Listen: <audio> what is said?")
    assert first.messages[0]["content"] == "Listen: <audio> what is said?"


def test_bad_prompt_options_fail_before_the_model_loads(ckpt, monkeypatch):
    monkeypatch.setattr(cli, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match="--prompt_format 'chat'"):
        cli.main(["--model-path", str(ckpt), "--prompt-format", "chat"])
    with pytest.raises(SystemExit, match="--system_prompt nowhere/system.txt: file not found"):
        cli.main(["--model-path", str(ckpt), "--system-prompt", "nowhere/system.txt"])
