"""The FastAPI app each replica serves beside its handle methods (see `EngineServer.__serve_build_asgi_app__`).

    GET  /health                  200 when the engine passes its health check, else 503 (as vLLM's /health)
    GET  /ready                   200 with the model when the app can take requests, else 503
    GET  /v1/models               the one model this app serves
    GET  /v1/models/{model}
    POST /v1/chat/completions     OpenAI chat completions with audio; `stream: true` answers server-sent events

Errors are OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`) with the status that says what
went wrong: 400 audio that cannot be decoded or is too long and messages the model cannot take, 401 a missing or
wrong API key, 404 another model's name, 413 a body over `deployment.http.max_body_bytes`, 422 an invalid field,
503 an engine that cannot serve, 504 no answer within `deployment.request_timeout_s`. A stack trace never
reaches the caller; it goes to the replica's log.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.config import HTTPConfig
from contract.formats import get_format
from contract.messages import GenerationRequest, GenerationResult, ModelInfo
from deployments.engines.base import StreamDelta
from deployments.openai import protocol
from deployments.openai.convert import to_generation_request
from deployments.openai.protocol import APIError
from deployments.openai.stream import StreamSplitter

logger = logging.getLogger("ray.serve")

# A failed result's error class -> HTTP status. Anything else (the engine in trouble) is 503.
_STATUS = {"RequestRejected": (400, "request_rejected"), "RequestTimeout": (504, "timeout"),
           "AnswerInvalid": (500, "answer_invalid")}


class Backend(Protocol):
    """What the routes need from the replica (EngineServer)."""

    http: HTTPConfig
    api_key: str | None

    @property
    def model_info(self) -> ModelInfo: ...

    async def generate_one(self, request: GenerationRequest) -> GenerationResult: ...

    def stream_one(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]: ...

    async def check_health(self) -> None: ...


def build_app(server: Backend) -> FastAPI:
    app = FastAPI(title="audio-reasoning", description="OpenAI-compatible chat completions over audio.")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        error = APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else "http_error")
        return JSONResponse(error.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        error = APIError(500, "internal error; the replica's log has the details", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: Request) -> None:
        if server.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send Authorization: Bearer <key>", code="missing_api_key")
        if not hmac.compare_digest(token.strip().encode(), server.api_key.encode()):
            raise APIError(401, "invalid API key", code="invalid_api_key")

    async def engine_healthy() -> None:
        try:
            await server.check_health()
        except Exception as e:
            raise APIError(503, f"the engine cannot serve: {type(e).__name__}: {e}",
                           code="engine_unavailable") from None

    @app.get("/health")
    async def health() -> Response:
        await engine_healthy()
        return Response(status_code=200)

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        await engine_healthy()
        info = server.model_info
        return {"status": "ready", "model": info.model_name, "family": info.family,
                "max_audio_item_s": info.max_item_s}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        info = server.model_info
        return {"object": "list", "data": [protocol.model_card(info.model_name, info.max_item_s, info.family, info.max_model_len,
                                       info.max_audio_items)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> dict[str, Any]:
        authorize(request)
        info = server.model_info
        if model != info.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this app serves {info.model_name!r}",
                           code="model_not_found", param="model")
        return protocol.model_card(info.model_name, info.max_item_s, info.family, info.max_model_len,
                                       info.max_audio_items)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = protocol.parse_request(await _read_body(request, server.http.max_body_bytes))
        info = server.model_info
        if body.model is not None and body.model != info.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this app serves {info.model_name!r}",
                           code="model_not_found", param="model")
        completion_id = protocol.new_completion_id()
        fmt = get_format(info.family)
        generation = await to_generation_request(body, fmt, server.http,
                                                 request.headers.get("x-request-id") or completion_id)
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(server, generation, fmt, completion_id, created, info.model_name, include_usage)
        try:
            result = await server.generate_one(generation)
        except Exception as e:
            raise _engine_error(e) from None
        _raise_for_failure(result)
        return JSONResponse(protocol.completion(completion_id, created, info.model_name, result))

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = APIError(413, f"request body is over {limit} bytes (deployment.http.max_body_bytes); send shorter "
                         "audio, or compressed audio (flac, mp3, ogg)", code="body_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large
        chunks.append(piece)
    return b"".join(chunks)


def _engine_error(e: BaseException) -> APIError:
    logger.error("engine failed a request: %s: %s", type(e).__name__, e, exc_info=e)
    return APIError(503, f"the engine cannot serve: {type(e).__name__}: {e}", code="engine_unavailable")


def _failure(result: GenerationResult) -> APIError:
    status, code = _STATUS.get(result.error_class, (503, "engine_unavailable"))
    return APIError(status, result.error or result.error_class, code=code)


def _raise_for_failure(result: GenerationResult) -> None:
    if result.error_class:
        raise _failure(result)


async def _stream(server: Backend, generation: GenerationRequest, fmt: Any, completion_id: str, created: int,
                  model: str, include_usage: bool) -> Response:
    """Server-sent events, as OpenAI's: a role chunk, reasoning and content deltas, a finish chunk, optionally a
    usage chunk, `[DONE]`. A request the engine refuses before its first piece gets an error status, not a
    stream; a failure after it is an `error` event before `[DONE]`."""
    pieces = server.stream_one(generation)
    try:
        first = await anext(pieces)
    except Exception as e:
        await pieces.aclose()
        raise _engine_error(e) from None
    if first.result is not None and first.result.error_class:
        await pieces.aclose()
        raise _failure(first.result)

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return event(protocol.chunk(completion_id, created, model, delta, finish_reason=finish_reason))

    async def events() -> AsyncIterator[str]:
        splitter = StreamSplitter(fmt, generation.prefill)
        try:
            yield chunk({"role": "assistant", "content": ""})
            piece: StreamDelta | None = first
            while piece is not None:
                if piece.result is not None and piece.result.error_class:
                    yield event(_failure(piece.result).body())
                    break
                reasoning, answer = (splitter.finish(piece.result) if piece.result is not None
                                     else splitter.feed(piece.text))
                if reasoning:
                    yield chunk(protocol.reasoning_fields(reasoning))
                if answer:
                    yield chunk({"content": answer})
                if piece.result is not None:
                    yield chunk({}, finish_reason=piece.result.finish_reason)
                    if include_usage:
                        yield event(protocol.usage_chunk(completion_id, created, model, piece.result))
                    break
                piece = await anext(pieces, None)
        except Exception as e:
            yield event(_engine_error(e).body())
        finally:
            await pieces.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
