"""Request parsing: prompts built from OpenAI messages, decoding settings, limits and the errors' fields."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
from llava.inference.generation import GenerationSettings
from llava.inference.prompts import PromptOptions
from llava.serve.requests import (
    APIError,
    RequestContext,
    ServerLimits,
    chat_job,
    decode_upload,
    transcription_job,
)
from llava.tokenization import add_audio_token, ensure_pad_token


@pytest.fixture(scope="module")
def ctx(tiny_tokenizer):
    add_audio_token(tiny_tokenizer)
    ensure_pad_token(tiny_tokenizer)
    return RequestContext(
        model_name="m",
        tokenizer=tiny_tokenizer,
        num_audio_tokens=lambda n: n // 1600,  # 10 positions per second
        sampling_rate=16000,
        max_positions=400,
        defaults=GenerationSettings(max_new_tokens=20, num_beams=2),
        prompt=PromptOptions(),
        limits=ServerLimits(max_audio_seconds=3.0, max_audios=2, max_tokens=64),
    )


def _wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * rate), 0.1, np.float32), rate, format="WAV")
    return buf.getvalue()


def _audio(seconds: float = 1.0) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(_wav(seconds)).decode(), "format": "wav"},
    }


def _error(call) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    return info.value


def _user_turn(ctx, text: str) -> str:
    return ctx.tokenizer.apply_chat_template(
        [{"role": "system", "content": PAPER_SYSTEM_PROMPT}, {"role": "user", "content": text}],
        tokenize=False,
        add_generation_prompt=True,
    )


def test_chat_parts_become_the_papers_prompt(ctx):
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [_audio(1.0), {"type": "text", "text": "Transcribe <audio> the audio."}],
            }
        ],
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 5,
        "stop": ["\n\n"],
    }
    job = chat_job(ctx, body)
    # Audio part, newline, text; a literal <audio> in client text is not a placeholder.
    assert job.text == _user_turn(ctx, "<audio>\nTranscribe   the audio.")
    assert len(job.audios) == 1 and len(job.audios[0]) == 16000
    assert job.settings.max_new_tokens == 7 and job.settings.temperature == 0.5 and job.settings.top_p == 0.9
    assert job.settings.num_beams == 1  # sampling overrides the server's beam search
    assert job.row_id == "seed-5" and job.stop == ["\n\n"]
    n_text = len(ctx.tokenizer(job.text, add_special_tokens=False)["input_ids"]) - 1
    assert job.prompt_tokens == n_text + 10
    # The request's own system turn replaces the layout's; "developer" is a system turn.
    own = chat_job(
        ctx,
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        },
    )
    assert PAPER_SYSTEM_PROMPT not in own.text and "Be brief." in own.text
    assert (
        chat_job(ctx, {"model": "m", "messages": [{"role": "user", "content": "x"}]}).settings.max_new_tokens
        == 20
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "m", "messages": "hello"}, 400, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, 400, "max_tokens"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
            400,
            "max_completion_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 1.0},
            400,
            "presence_penalty",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, 400, "stop"),
        (
            {"model": "m", "messages": [{"role": "assistant", "content": [_audio()]}]},
            400,
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [_audio(4.0)]}]},
            400,
            "messages[0].content[0].input_audio.data",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [_audio()] * 3}]},
            400,
            "messages[0].content[2]",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}],
            },
            400,
            "messages[0].content[0].input_audio",
        ),
        # 2.9 s of audio (29 positions) + the prompt + max_tokens 64 > a 400-position context
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [_audio(2.9), {"type": "text", "text": "x " * 300}]}
                ],
                "max_tokens": 64,
            },
            400,
            "messages",
        ),
    ],
)
def test_bad_chat_requests_name_the_field(ctx, body, status, param):
    err = _error(lambda: chat_job(ctx, body))
    assert (err.status, err.param) == (status, param)
    assert (
        err.body()["error"]["message"] == err.message
        and err.body()["error"]["type"] == "invalid_request_error"
    )


def test_transcription_uses_the_asr_instruction_in_the_requested_language(ctx):
    job, fmt = transcription_job(ctx, {"model": "m"}, _wav(1.0))
    assert fmt == "json" and job.text == _user_turn(ctx, "<audio>\nTranscribe the audio.")
    german, fmt = transcription_job(
        ctx, {"model": "m", "language": "de", "response_format": "text"}, _wav(1.0)
    )
    assert fmt == "text" and "<audio>\nTranskribiere die Audioaufnahme." in german.text
    sampled, _ = transcription_job(ctx, {"model": "m", "temperature": "0.7", "seed": "3"}, _wav(1.0))
    assert sampled.settings.temperature == 0.7 and sampled.row_id == "seed-3"
    for form, param in [
        ({"model": "m", "response_format": "srt"}, "response_format"),
        ({"model": "m", "prompt": "Names: Ada"}, "prompt"),
        ({"model": "m", "temperature": "warm"}, "temperature"),
        ({"model": "m", "seed": "1.5"}, "seed"),
        ({"model": "m", "stream": "true"}, "stream"),
    ]:
        assert _error(lambda f=form: transcription_job(ctx, f, _wav(1.0))).param == param


def test_uploaded_audio_is_decoded_resampled_and_checked(ctx):
    assert len(decode_upload(ctx, _wav(1.0, rate=8000), "file")) == 16000
    assert _error(lambda: decode_upload(ctx, b"", "file")).code == "invalid_audio"
    assert _error(lambda: decode_upload(ctx, b"\x00" * 400, "file")).code == "invalid_audio"
    err = _error(lambda: decode_upload(ctx, _wav(3.5), "file"))
    assert err.code == "audio_too_long" and "3.5 s" in err.message
