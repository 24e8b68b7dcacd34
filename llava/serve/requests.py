"""OpenAI-style requests -> generation jobs, with every check a request can fail made up front.

A request that breaks a rule is an `APIError`: an HTTP status (4xx) and an OpenAI-style body
`{"error": {"message", "type", "param", "code"}}` naming the offending field, so a client sees what to
fix and the server goes on serving. Limits (`ServerLimits`): request bytes, seconds of audio, audio
parts per request, `max_tokens`, and prompt + answer within the LLM's context.

Prompts: a chat request's messages are rendered by the tokenizer's chat template (the layout's system
turn first unless the request brings its own); in a user message, each `input_audio` part becomes an
`<audio>` placeholder and parts are joined by newlines in the order given, so `[audio, text]` gives
the paper's `<audio>\\n{instruction}`. A transcription request uses the ASR task's instruction in the
server's prompt layout (`language` picks the instruction's language where the prompt file has one).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from llava.constants import AUDIO_TOKEN
from llava.dataset.audio import AudioDecodeError, audio_info, decode_audio
from llava.dataset.tasks import get_task
from llava.inference.generation import GenerationSettings
from llava.inference.prompts import PromptOptions

__all__ = [
    "APIError",
    "GenerationJob",
    "RequestContext",
    "ServerLimits",
    "chat_job",
    "transcription_job",
]

TRANSCRIPTION_FORMATS = ("json", "text")


class APIError(Exception):
    """A request the server refuses: HTTP `status` and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for (server flags)."""

    max_request_bytes: int = 25 * 2**20  # whole request body (the OpenAI audio upload limit)
    max_audio_seconds: float = 60.0  # per audio input
    max_audios: int = 4  # audio inputs per request
    max_tokens: int = 1024  # largest max_tokens a request may set


@dataclass
class GenerationJob:
    """One request as the batching engine runs it."""

    text: str  # the rendered prompt, one `<audio>` per waveform
    audios: list[np.ndarray]  # float32 mono at the encoder's rate, in placeholder order
    settings: GenerationSettings
    row_id: str  # seeds this row's sampling stream (llava.inference.generation.row_seed)
    stop: list[str] = field(default_factory=list)  # the answer is cut before the first of these
    prompt_tokens: int = 0  # LLM positions of the prompt, audio included


@dataclass
class RequestContext:
    """What parsing a request needs to know about the served model."""

    model_name: str
    tokenizer: Any
    num_audio_tokens: Any  # samples -> LLM positions (SpeechLlavaProcessor.num_audio_tokens)
    sampling_rate: int
    max_positions: int | None  # the LLM's context length (None: unknown)
    defaults: GenerationSettings  # server-side decoding defaults
    prompt: PromptOptions
    limits: ServerLimits


# ----------------------------------------------------------------------------------------- fields
def _number(body: Mapping, key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", param=key)
    return value


def check_model(ctx: RequestContext, model: Any) -> None:
    """`model` must name the served model (404 otherwise, as the OpenAI API answers)."""
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required (see GET /v1/models)", param="model")
    if model != ctx.model_name:
        raise APIError(
            404,
            f"The model {model!r} does not exist; this server serves {ctx.model_name!r}",
            param="model",
            code="model_not_found",
        )


def settings_for(
    ctx: RequestContext, body: Mapping, *, max_tokens_keys: tuple[str, ...]
) -> GenerationSettings:
    """Decoding settings: the server defaults with the request's own values."""
    changes: dict[str, Any] = {}
    for key in max_tokens_keys:
        value = _number(body, key, 1, ctx.limits.max_tokens, integer=True)
        if value is not None:
            changes["max_new_tokens"] = value
    if ctx.defaults.max_new_tokens > ctx.limits.max_tokens and "max_new_tokens" not in changes:
        changes["max_new_tokens"] = ctx.limits.max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        changes["temperature"] = float(temperature)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        changes["top_p"] = float(top_p) if top_p > 0 else None
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, -2.0, 2.0):
            raise APIError(400, f"{key} is not supported (use repetition_penalty)", param=key)
    penalty = _number(body, "repetition_penalty", 0.01, 10.0)
    if penalty is not None:
        changes["repetition_penalty"] = float(penalty)
    if changes.get("temperature", ctx.defaults.temperature) > 0:
        changes["num_beams"] = 1  # a request that samples overrides server-side beam search
    try:
        return replace(ctx.defaults, **changes)
    except ValueError as exc:
        raise APIError(400, f"invalid decoding settings: {exc}") from None


def _row_id(body: Mapping) -> str:
    seed = _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    return f"seed-{seed if seed is not None else secrets.randbits(63)}"


def _stop(body: Mapping) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "stop must be a non-empty string or a list of up to 4 of them", param="stop")
    return stops


# ----------------------------------------------------------------------------------------- audio
def decode_upload(ctx: RequestContext, data: bytes, param: str) -> np.ndarray:
    """Encoded audio bytes -> float32 mono at the encoder's rate; 400 naming `param` when unusable."""
    if not data:
        raise APIError(400, "the audio is empty", param=param, code="invalid_audio")
    try:
        frames, rate = audio_info(data)
    except AudioDecodeError as exc:
        raise APIError(400, f"cannot read the audio: {exc}", param=param, code="invalid_audio") from None
    seconds = frames / rate if rate else float("inf")
    if seconds > ctx.limits.max_audio_seconds:
        raise APIError(
            400,
            f"the audio lasts {seconds:.1f} s; this server accepts at most {ctx.limits.max_audio_seconds:g} s",
            param=param,
            code="audio_too_long",
        )
    try:
        return decode_audio(data, ctx.sampling_rate)
    except AudioDecodeError as exc:
        raise APIError(400, f"cannot decode the audio: {exc}", param=param, code="invalid_audio") from None


def _b64_audio(ctx: RequestContext, part: Mapping, param: str) -> np.ndarray:
    spec = part.get("input_audio")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("data"), str):
        raise APIError(400, "input_audio must be an object with base64 'data'", param=param)
    try:
        data = base64.b64decode(spec["data"], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "input_audio.data is not valid base64", param=f"{param}.data") from None
    return decode_upload(ctx, data, f"{param}.data")


# ----------------------------------------------------------------------------------------- prompts
def _clean(text: str) -> str:
    # A literal placeholder in client text would be taken for audio: it is not the client's to place.
    return text.replace(AUDIO_TOKEN, " ")


def _render(ctx: RequestContext, messages: list[dict[str, str]], audios: list[np.ndarray]) -> tuple[str, int]:
    text = ctx.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n_text = len(ctx.tokenizer(text, add_special_tokens=False)["input_ids"]) - len(audios)
    return text, n_text + sum(int(ctx.num_audio_tokens(len(a))) for a in audios)


def _check_length(ctx: RequestContext, prompt_tokens: int, settings: GenerationSettings) -> None:
    if ctx.max_positions is not None and prompt_tokens + settings.max_new_tokens > ctx.max_positions:
        raise APIError(
            400,
            f"the prompt takes {prompt_tokens} positions (audio included) and max_tokens is "
            f"{settings.max_new_tokens}: more than the model's context of {ctx.max_positions}",
            param="messages",
            code="context_length_exceeded",
        )


def chat_job(ctx: RequestContext, body: Any) -> GenerationJob:
    """A `/v1/chat/completions` JSON body -> a generation job (APIError on any bad field)."""
    if not isinstance(body, Mapping):
        raise APIError(400, "the request body must be a JSON object")
    check_model(ctx, body.get("model"))
    if body.get("stream"):
        raise APIError(400, "streaming is not supported; send stream=false", param="stream")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    settings = settings_for(ctx, body, max_tokens_keys=("max_tokens", "max_completion_tokens"))
    rendered: list[dict[str, str]] = []
    audios: list[np.ndarray] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise APIError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(
                400, f"{where}.role {role!r}: expected system, user or assistant", param=f"{where}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            pieces = [_clean(content)]
        elif isinstance(content, list) and content:
            pieces = []
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(_clean(part["text"]))
                elif kind == "input_audio" and role == "user":
                    if len(audios) >= ctx.limits.max_audios:
                        raise APIError(
                            400, f"at most {ctx.limits.max_audios} audio inputs per request", param=pwhere
                        )
                    audios.append(_b64_audio(ctx, part, f"{pwhere}.input_audio"))
                    pieces.append(AUDIO_TOKEN)
                elif kind == "input_audio":
                    raise APIError(400, f"{pwhere}: audio is accepted in user messages only", param=pwhere)
                else:
                    raise APIError(
                        400,
                        f"{pwhere}: unsupported content part {kind!r} (text and input_audio are)",
                        param=pwhere,
                    )
        else:
            raise APIError(
                400, f"{where}.content must be a string or a list of parts", param=f"{where}.content"
            )
        rendered.append({"role": "system" if role == "developer" else role, "content": "\n".join(pieces)})
    if rendered[0]["role"] != "system":
        system = ctx.prompt.system_turn()
        if system:
            rendered.insert(0, {"role": "system", "content": system})
    text, prompt_tokens = _render(ctx, rendered, audios)
    _check_length(ctx, prompt_tokens, settings)
    return GenerationJob(text, audios, settings, _row_id(body), _stop(body), prompt_tokens)


def transcription_job(
    ctx: RequestContext, form: Mapping[str, Any], audio: bytes
) -> tuple[GenerationJob, str]:
    """A `/v1/audio/transcriptions` form (fields) and its file's bytes -> (job, response_format)."""
    check_model(ctx, form.get("model"))
    fmt = form.get("response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise APIError(
            400,
            f"response_format {fmt!r} is not supported; use one of {list(TRANSCRIPTION_FORMATS)}",
            param="response_format",
        )
    if form.get("prompt"):
        raise APIError(400, "prompt is not supported: the model uses its ASR instruction", param="prompt")
    if str(form.get("stream", "false")).lower() == "true":
        raise APIError(400, "streaming is not supported", param="stream")
    fields = dict(form)  # form values arrive as text
    for key, kind in (("temperature", float), ("seed", int)):
        if fields.get(key) in (None, ""):
            fields.pop(key, None)
            continue
        try:
            fields[key] = kind(fields[key])
        except ValueError:
            raise APIError(
                400, f"{key} must be {'a number' if kind is float else 'an integer'}", param=key
            ) from None
    settings = settings_for(ctx, fields, max_tokens_keys=())
    wave = decode_upload(ctx, audio, "file")
    language = form.get("language") or None
    user = ctx.prompt.prompter().user_turn(get_task("ASR"), {}, source_language=language)
    system = ctx.prompt.system_turn()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    text, prompt_tokens = _render(ctx, messages, [wave])
    _check_length(ctx, prompt_tokens, settings)
    return GenerationJob(text, [wave], settings, _row_id(fields), [], prompt_tokens), fmt
