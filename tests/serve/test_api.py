"""The OpenAI-compatible API end to end: the real `openai` client against one server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from llava.dataset.collator import SpeechCollator  # noqa: E402
from llava.inference.generation import GenerationSettings, generate_batch  # noqa: E402
from llava.inference.prompts import PromptOptions  # noqa: E402
from llava.model.pretrained import load_for_inference  # noqa: E402
from llava.model.processing import SpeechLlavaProcessor  # noqa: E402
from llava.serve import api  # noqa: E402
from llava.serve.engine import BatchingEngine  # noqa: E402
from llava.serve.requests import ServerLimits  # noqa: E402

NAME = "tiny-speech-llava"
MAX_NEW = 8
LIMITS = ServerLimits(max_request_bytes=512 * 1024, max_audio_seconds=4.0, max_audios=2, max_tokens=32)


def _wave(i: int) -> np.ndarray:
    """Utterance i: a tone (its own pitch and length) in light noise."""
    rng = np.random.default_rng(i)
    t = np.arange(int(16000 * (1.0 + 0.2 * i))) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype(
        np.float32
    )


def _wav_bytes(wave: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    model, tokenizer = load_for_inference(tiny_checkpoint)
    with torch.no_grad():  # let the audio decide the (random) model's answer
        for p in model.projector.parameters():
            p.mul_(4.0)
    processor = SpeechLlavaProcessor.from_model(model, tokenizer)
    # A long wait so concurrent requests surely meet in one batch.
    engine = BatchingEngine(model, tokenizer, processor, max_batch_size=16, max_wait_ms=50).start()
    prompt = PromptOptions(system_prompt="none")
    ctx = api.build_context(
        model, tokenizer, processor, NAME, GenerationSettings(max_new_tokens=MAX_NEW), prompt, LIMITS
    )
    server = api.ServerThread(api.create_app(api.Served(engine, ctx, 0)), api.open_socket("127.0.0.1", 0))
    server.start()
    yield model, tokenizer, engine, server
    server.stop()
    engine.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[3].url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _reference(model, tokenizer, waves, max_new=MAX_NEW):
    """The answers of the inference layer itself, without the server."""
    collator = SpeechCollator(tokenizer, model.num_audio_tokens, inference=True)
    samples = [
        {"id": f"r{i}", "task": "ASR", "audio": w, "prompt": "<audio>\nTranscribe the audio.", "target": ""}
        for i, w in enumerate(waves)
    ]
    return generate_batch(model, tokenizer, collator(samples), GenerationSettings(max_new_tokens=max_new))


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    status, body = _get(served[3].url + "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == NAME


def test_transcription_json_and_text_match_the_inference_layer(served, client):
    model, tokenizer = served[0], served[1]
    wave = _wave(0)
    want = _reference(model, tokenizer, [wave])[0]
    got = client.audio.transcriptions.create(model=NAME, file=("a.wav", _wav_bytes(wave)))
    assert got.text == want
    text = client.audio.transcriptions.create(
        model=NAME, file=("a.wav", _wav_bytes(wave)), response_format="text"
    )
    assert text.strip() == want
    # Another container and sampling rate: decoded and resampled to the encoder's 16 kHz.
    flac = client.audio.transcriptions.create(model=NAME, file=("a.flac", _wav_bytes(wave, fmt="FLAC")))
    assert isinstance(flac.text, str)


def test_chat_with_audio_equals_the_transcription(served, client):
    wave = _wav_bytes(_wave(1))
    asr = client.audio.transcriptions.create(model=NAME, file=("a.wav", wave)).text
    # [audio, instruction] is the paper's `<audio>\n{instruction}`: the transcription request's prompt.
    resp = client.chat.completions.create(
        model=NAME,
        messages=[
            {
                "role": "user",
                "content": [_audio_part(wave), {"type": "text", "text": "Transcribe the audio."}],
            }
        ],
        max_tokens=MAX_NEW,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == asr
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > served[0].num_audio_tokens(len(_wave(1)))
    assert 0 < resp.usage.completion_tokens <= MAX_NEW
    # A shorter max_tokens cuts the answer: "length".
    short = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": [_audio_part(wave)]}], max_tokens=1
    )
    assert short.usage.completion_tokens <= 1
    if short.usage.completion_tokens == 1:
        assert short.choices[0].finish_reason == "length"
    # Text-only chat works too.
    assert isinstance(
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}]).id, str
    )


def test_concurrent_requests_equal_sequential_ones(served, client):
    engine = served[2]
    files = [_wav_bytes(_wave(i)) for i in range(8)]

    def ask(data: bytes) -> str:
        return client.audio.transcriptions.create(model=NAME, file=("a.wav", data)).text

    sequential = [ask(f) for f in files]
    assert len(set(sequential)) >= 4  # the audio decides the answer, so a row mix-up would show
    before = engine.stats.largest_batch
    with ThreadPoolExecutor(len(files)) as pool:
        concurrent = list(pool.map(ask, files))
    assert concurrent == sequential
    assert engine.stats.largest_batch >= 2 and engine.stats.largest_batch >= before


def _api_error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.body


def test_bad_inputs_are_4xx_with_openai_errors_and_the_server_keeps_serving(served, client):
    url = served[3].url
    ok = _wav_bytes(_wave(0))
    chat = client.chat.completions.create
    cases = {
        "undecodable audio": (
            lambda: client.audio.transcriptions.create(model=NAME, file=("a.wav", b"not audio at all")),
            400,
            "file",
        ),
        "audio too long": (
            lambda: client.audio.transcriptions.create(
                model=NAME, file=("a.wav", _wav_bytes(np.zeros(16000 * 5, np.float32)))
            ),
            400,
            "file",
        ),
        "body too large": (
            lambda: client.audio.transcriptions.create(
                model=NAME, file=("a.wav", _wav_bytes(np.zeros(16000 * 20, np.float32)))
            ),
            413,
            None,
        ),
        "unknown model": (
            lambda: client.audio.transcriptions.create(model="gpt-4o", file=("a.wav", ok)),
            404,
            "model",
        ),
        "unknown model (chat)": (
            lambda: chat(model="nope", messages=[{"role": "user", "content": "x"}]),
            404,
            "model",
        ),
        "bad format": (
            lambda: client.audio.transcriptions.create(model=NAME, file=("a.wav", ok), response_format="srt"),
            400,
            "response_format",
        ),
        "no messages": (lambda: chat(model=NAME, messages=[]), 400, "messages"),
        "bad base64": (
            lambda: chat(
                model=NAME,
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}}],
                    }
                ],
            ),
            400,
            "messages[0].content[0].input_audio.data",
        ),
        "garbage audio in chat": (
            lambda: chat(model=NAME, messages=[{"role": "user", "content": [_audio_part(b"RIFF....junk")]}]),
            400,
            "messages[0].content[0].input_audio.data",
        ),
        "max_tokens over the limit": (
            lambda: chat(model=NAME, messages=[{"role": "user", "content": "x"}], max_tokens=10_000),
            400,
            "max_tokens",
        ),
        "unsupported part": (
            lambda: chat(
                model=NAME,
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
                ],
            ),
            400,
            "messages[0].content[0]",
        ),
        "too many audios": (
            lambda: chat(model=NAME, messages=[{"role": "user", "content": [_audio_part(ok)] * 3}]),
            400,
            "messages[0].content[2]",
        ),
    }
    for what, (call, status, param) in cases.items():
        code, body = _api_error(call)
        assert code == status, what
        assert body["message"] and body["type"] == "invalid_request_error", what
        assert body["param"] == param, what
    # Bodies the client would never send.
    code, body = _post(url + "/v1/chat/completions", b"{not json")
    assert code == 400 and "JSON" in body["error"]["message"]
    code, body = _post(url + "/v1/chat/completions", b"[1, 2]")
    assert code == 400 and body["error"]["type"] == "invalid_request_error"
    code, body = _post(url + "/v1/audio/transcriptions", b"model=x", "application/x-www-form-urlencoded")
    assert code == 400 and "multipart" in body["error"]["message"]
    code, body = _get(url + "/v1/no-such-route")
    assert code == 404 and body["error"]["code"] == "not_found"
    # Still serving, and none of it counted as a generation failure.
    assert (
        client.audio.transcriptions.create(model=NAME, file=("a.wav", ok)).text
        == _reference(served[0], served[1], [_wave(0)])[0]
    )
    assert _get(url + "/health")[1]["failed"] == 0


def test_port_in_use_and_a_bad_model_path_are_clear_errors(tiny_checkpoint, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit, match=f"port {port} on 127.0.0.1 is already in use"):
            api.main(["--model-path", str(tiny_checkpoint), "--port", str(port)])
    finally:
        busy.close()
    with pytest.raises(SystemExit, match="not a speech-llava checkpoint"):
        api.main(["--model-path", str(tmp_path), "--port", "0"])
    with pytest.raises(SystemExit, match="not a directory"):
        api.main(["--model-path", str(tmp_path / "missing"), "--port", "0"])
    with pytest.raises(SystemExit, match="--max-request-mb"):
        api.main(["--model-path", str(tiny_checkpoint), "--max-request-mb", "0"])
