"""An OpenAI-compatible HTTP API for a checkpoint or an export: `python -m llava.serve.api`.

    python -m llava.serve.api --model-path CKPT_OR_EXPORT [--host 127.0.0.1 --port 8000]

Endpoints (the OpenAI API's shapes, so its clients work unchanged):
- `POST /v1/audio/transcriptions`: multipart `file` (wav, flac, ogg, ... anything soundfile reads) and
  `model`; optional `language`, `temperature`, `response_format` json (`{"text": ...}`) or text.
- `POST /v1/chat/completions`: `messages` whose user content may hold `input_audio` parts (base64
  audio, `{"data": ..., "format": "wav"}`) beside text parts; `max_tokens`/`max_completion_tokens`,
  `temperature`, `top_p`, `seed`, `stop`, plus `repetition_penalty`.
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (with the batching counters).

Requests that arrive together are generated as one batch (`llava.serve.engine`); answers are the
ones each request gets alone. Every refused request is a 4xx with an OpenAI-style error body
(`llava.serve.requests`): a body over `--max-request-mb` (413), unreadable or too long audio, an
unknown model (404), a malformed body, a `max_tokens` over `--max-tokens-limit`. Decoding defaults
come from the usual flags (`--max-new-tokens`, `--temperature`, ...; greedy by default) and the prompt
layout from `--prompt-format` / `--system-prompt`, as in evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from llava.serve.engine import BatchingEngine, Completion
from llava.serve.requests import (
    APIError,
    GenerationJob,
    RequestContext,
    ServerLimits,
    chat_job,
    transcription_job,
)

__all__ = ["ServerThread", "build_context", "create_app", "main", "open_socket"]

logger = logging.getLogger("llava.serve.api")


@dataclass
class Served:
    """The served model and what requests are checked against."""

    engine: BatchingEngine
    ctx: RequestContext
    created: int  # unix time the server started (the "created" of /v1/models)


def build_context(
    model: Any,
    tokenizer: Any,
    processor: Any,
    model_name: str,
    defaults: Any,
    prompt: Any,
    limits: ServerLimits,
) -> RequestContext:
    """The `RequestContext` of a loaded model."""
    lm_config = getattr(getattr(model, "config", None), "text_config", None)
    return RequestContext(
        model_name=model_name,
        tokenizer=tokenizer,
        num_audio_tokens=processor.num_audio_tokens,
        sampling_rate=processor.sampling_rate,
        max_positions=getattr(lm_config, "max_position_embeddings", None),
        defaults=defaults,
        prompt=prompt,
        limits=limits,
    )


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, or a 413 once it passes `limit` bytes. An oversized body is still read (and
    dropped), up to a hard cap, so the client receives the error instead of a reset connection."""
    too_large = APIError(
        413,
        f"the request body exceeds this server's limit of {limit / 2**20:.1f} MB",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 8 * limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 8 * limit:
            break
    if size > limit:
        raise too_large
    body = b"".join(chunks)
    request._body = body  # starlette's form parser reads the body from here
    return body


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def create_app(served: Served) -> FastAPI:
    """The FastAPI application around a started engine."""
    app = FastAPI(title="speech-llava", docs_url=None, redoc_url=None)
    ctx, engine = served.ctx, served.engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, f"malformed request: {exc.errors()}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        body = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    async def run(job: GenerationJob) -> Completion:
        return await asyncio.wrap_future(engine.submit(job))

    def model_card() -> dict[str, Any]:
        return {
            "id": ctx.model_name,
            "object": "model",
            "created": served.created,
            "owned_by": "speech-llava",
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": ctx.model_name, "pending": engine.pending, **engine.stats.as_dict()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != ctx.model_name:
            raise APIError(
                404, f"The model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await _read_body(request, ctx.limits.max_request_bytes)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}") from None
        job = chat_job(ctx, data)
        c = await run(job)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": ctx.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason,
                    }
                ],
                "usage": _usage(c),
            }
        )

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        await _read_body(request, ctx.limits.max_request_bytes)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "expected a multipart/form-data body with a 'file' field")
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as exc:  # noqa: BLE001 - starlette raises several types for bad multipart
            raise APIError(400, f"malformed multipart body: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "the audio file is required (multipart field 'file')", param="file")
        audio = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        job, fmt = transcription_job(ctx, fields, audio)
        c = await run(job)
        if fmt == "text":
            return PlainTextResponse(c.text)
        return JSONResponse({"text": c.text, "usage": {"type": "tokens", **_usage(c)}})

    return app


# --------------------------------------------------------------------------------------------- running
def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; a clear error when the port is taken or not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"--host {host}: cannot resolve it ({exc})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                f"port {port} on {host} is already in use: stop what listens there or pass another --port"
            ) from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """Runs an app with uvicorn on an open socket in a background thread (tests, benchmarks)."""

    def __init__(self, app: Any, sock: socket.socket, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from llava.inference.arguments import add_generation_arguments, add_model_arguments, add_prompt_arguments

    p = argparse.ArgumentParser(
        prog="python -m llava.serve.api", description="OpenAI-compatible HTTP API for a speech-llava model."
    )
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument(
        "--served-model-name", default=None, help="the model id clients send (default: folder name)"
    )
    g.add_argument(
        "--max-batch-size", type=int, default=16, help="requests generated together (1: no batching)"
    )
    g.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with"
    )
    g.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body")
    g.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest audio input")
    g.add_argument("--max-audios-per-request", type=int, default=4, help="audio inputs in one request")
    g.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for"
    )
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_prompt_arguments(p)
    add_generation_arguments(p)
    return p.parse_args(argv)


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    for flag, value in (
        ("--max-request-mb", args.max_request_mb),
        ("--max-audio-seconds", args.max_audio_seconds),
        ("--max-audios-per-request", args.max_audios_per_request),
        ("--max-tokens-limit", args.max_tokens_limit),
    ):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    return ServerLimits(
        max_request_bytes=int(args.max_request_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
        max_audios=args.max_audios_per_request,
        max_tokens=args.max_tokens_limit,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from llava.inference.arguments import prompt_options_from_args, settings_from_args
    from llava.inference.loading import resolve_dtype
    from llava.model.pretrained import checkpoint_format, load_for_inference
    from llava.model.processing import SpeechLlavaProcessor

    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:  # everything that can fail before the model loads fails here, the port included
        settings, prompt = settings_from_args(args), prompt_options_from_args(args)
        limits = limits_from_args(args)
        if not Path(args.model_path).is_dir():
            raise ValueError(f"--model-path {args.model_path}: not a directory")
        checkpoint_format(args.model_path)
        engine_args = dict(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
        if args.max_batch_size < 1 or args.max_wait_ms < 0:
            raise ValueError("--max-batch-size must be >= 1 and --max-wait-ms >= 0")
        sock = open_socket(args.host, args.port)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    model, tokenizer = load_for_inference(
        args.model_path,
        audio_encoder=args.audio_encoder,
        llm=args.llm,
        device=args.device,
        dtype=resolve_dtype(args.dtype, args.device),
    )
    if args.audio_feature_cache:  # repeated audio (benchmarks, replays) skips the frozen encoder
        from llava.model.feature_cache import attach_feature_cache

        attach_feature_cache(model.audio_tower, args.audio_feature_cache)
    processor = SpeechLlavaProcessor.from_model(model, tokenizer)
    name = args.served_model_name or Path(args.model_path).resolve().name
    engine = BatchingEngine(model, tokenizer, processor, **engine_args).start()
    ctx = build_context(model, tokenizer, processor, name, settings, prompt, limits)
    app = create_app(Served(engine, ctx, int(time.time())))
    host, port = sock.getsockname()[:2]
    logger.info(
        "serving %s as %r on http://%s:%d (batches of up to %d)",
        args.model_path,
        name,
        host,
        port,
        args.max_batch_size,
    )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
