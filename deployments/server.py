"""The Serve deployment: one engine per replica, answering requests from the pipeline (through a handle, one
call per request) and people and programs over HTTP (OpenAI-compatible routes, `deployments.openai.routes`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from contract.answers import AnswerInvalid, canonical, check_answer
from contract.config import EngineConfig, HTTPConfig
from contract.messages import GenerationRequest, GenerationResult, ModelInfo, Occupancy, error_fields
from deployments.engines import create_engine
from deployments.engines.base import RequestFailed, RequestRejected, StreamDelta
from deployments.metrics import ReplicaMetrics
from deployments.occupancy import OccupancySampler, occupancy
from deployments.owner import OwnerWatch

# What a request can end in without the engine being in trouble: each becomes a failed result, not an exception.
UNANSWERABLE = (RequestRejected, RequestFailed, asyncio.TimeoutError)


class RequestTimeout(Exception):
    """The engine gave no answer in time; the request was cancelled in the engine."""


class EngineStalled(Exception):
    """The engine held requests but finished none for `deployment.stall_timeout_s`: Serve replaces the replica."""


class ProgressWatch:
    """Notices an engine that has work and makes no progress (a hung kernel, a wedged worker), which a
    per-request timeout alone would only turn into endless retryable errors on the same stuck replica."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.in_flight = 0
        self.last_progress = time.monotonic()

    @contextlib.contextmanager
    def request(self):
        if not self.in_flight:
            self.last_progress = time.monotonic()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_progress = time.monotonic()

    def check(self) -> None:
        idle = time.monotonic() - self.last_progress
        if self.in_flight and idle > self.stall_s:
            raise EngineStalled(f"{self.in_flight} requests in flight and none finished for {idle:.0f} s "
                                f"(deployment.stall_timeout_s={self.stall_s:g})")


def held_to_schema(request: GenerationRequest, result: GenerationResult) -> GenerationResult:
    """The result with its answer as canonical JSON, or for an answer that does not hold to the request's schema, a
    retryable AnswerInvalid failure that keeps the reasoning and the answer (to see why). Every engine's answers
    pass here, whatever the engine did to constrain them. No answer at all (truncated reasoning) is not judged:
    it stays what it was."""
    if request.answer_schema is None or result.error_class or result.answer is None:
        return result
    try:
        value = check_answer(request.answer_schema, result.answer)
    except AnswerInvalid as e:
        return dataclasses.replace(result, **error_fields(e, retryable=True))
    return dataclasses.replace(result, answer=canonical(value))


def timed(result: GenerationResult, elapsed: float, waited: float) -> GenerationResult:
    """`result` with `latency_s` the engine's own time of the `elapsed` seconds in it and `queue_s` the wait: for a
    slot (`waited`) and in the engine's own queue (what it reported as `queue_s`, moved out of its time)."""
    inner = result.queue_s or 0.0
    result.latency_s, result.queue_s = elapsed - inner, waited + inner
    return result


@serve.ingress()  # the ASGI app is built per replica, after __init__: __serve_build_asgi_app__
class EngineServer:
    """Holds the replica's engine. Wrapped by `serve.deployment` in `deployments.app`."""

    def __init__(self, engine: dict[str, Any], request_timeout_s: float, http: dict[str, Any] | None = None,
                 stall_timeout_s: float = float("inf"), owner: dict[str, Any] | None = None):
        self.app_name = serve.get_replica_context().app_name
        # First, before a model load of minutes: an app whose job is gone deletes itself (deployments.owner).
        if owner:
            OwnerWatch(owner["token"], self.app_name, owner["check_s"]).start()
        self.http = HTTPConfig.model_validate(http or {})
        # Before the engine loads (minutes for a large model): a key that is named but missing is a broken
        # deployment, not an open endpoint.
        self.api_key: str | None = None
        if self.http.api_key_env:
            self.api_key = os.environ.get(self.http.api_key_env) or None
            if self.api_key is None:
                raise RuntimeError(f"deployment.http.api_key_env names {self.http.api_key_env}, which is not set "
                                   "in the replica's environment")
        self.engine = create_engine(EngineConfig.model_validate(engine))
        self.metrics = ReplicaMetrics(self.engine.info.model_name)
        self.sampler = OccupancySampler.started(self.engine, self.app_name, self.metrics)
        self.request_timeout_s = request_timeout_s
        self.watch = ProgressWatch(stall_timeout_s)
        # Made on first use, on the loop that serves requests.
        self._slots: asyncio.Semaphore | None = None

    def __serve_build_asgi_app__(self):
        from deployments.openai.routes import build_app

        return build_app(self)

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.info

    async def info(self) -> ModelInfo:
        return self.engine.info

    async def occupancy(self, start: float, end: float) -> Occupancy | None:
        """How full the app's engines (every replica's) kept their batches from `start` to `end` (wall-clock
        seconds, `time.time()`); None if the engine cannot count or nothing was sampled then."""
        return await occupancy(self.app_name, start, end)

    async def text_tokens(self, system: str | None, question: str, prefill: str | None, up_to: int) -> list[int]:
        """The prompt's text tokens with 0..`up_to` audio items (the pipeline packs recordings by them)."""
        return await self.engine.text_tokens(system, question, prefill, up_to)

    async def generate_one(self, request: GenerationRequest) -> GenerationResult:
        """One request's result (the pipeline sends each on its own, so Serve routes it alone)."""
        return await self.metrics.measure(self._generate_one(request))

    def stream_one(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        return self.metrics.measure_stream(self._stream_one(request))

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[float]:
        """One of the engine's `concurrency` slots (none to wait for if it sets no limit or queues itself); yields
        the seconds waited for it."""
        arrived = time.perf_counter()
        if self.engine.concurrency is None or self.engine.queues_itself:
            yield 0.0
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.engine.concurrency)
        async with self._slots:
            yield time.perf_counter() - arrived

    async def _timed(self, request: GenerationRequest) -> GenerationResult:
        """The engine's result, with `latency_s` its own time and `queue_s` the wait for a slot before it."""
        async with self._slot() as waited:
            began = time.perf_counter()
            result = await self.engine.generate(request)
        return timed(result, time.perf_counter() - began, waited)

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        """A result, failed if the request cannot be answered; raises only if the engine itself is in trouble."""
        try:
            with self.watch.request():
                result = await asyncio.wait_for(self._timed(request), self.request_timeout_s)
        except UNANSWERABLE as e:
            return self._failure(request, e)
        return held_to_schema(request, result)

    async def _stream_one(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The engine's pieces of one answer; a request that cannot be answered ends with a failed result, as
        in `generate_one`, and the whole answer is held to `request_timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        pieces = self.engine.stream(request)
        with self.watch.request():
            try:
                async with self._slot() as waited:
                    began = time.perf_counter()
                    while True:
                        try:
                            piece = await asyncio.wait_for(anext(pieces), max(deadline - loop.time(), 0))
                        except StopAsyncIteration:
                            return
                        except UNANSWERABLE as e:
                            yield StreamDelta("", self._failure(request, e))
                            return
                        if piece.result is not None and not piece.result.error_class:
                            timed(piece.result, time.perf_counter() - began, waited)
                            piece = dataclasses.replace(piece, result=held_to_schema(request, piece.result))
                        yield piece
            finally:
                await pieces.aclose()

    def _failure(self, request: GenerationRequest, e: Exception) -> GenerationResult:
        """The failed result for a request that cannot be answered (UNANSWERABLE); only a rejected one is final."""
        if isinstance(e, asyncio.TimeoutError):
            e = RequestTimeout(f"no answer within deployment.request_timeout_s={self.request_timeout_s} s")
        return GenerationResult.failure(request.request_id, e, retryable=not isinstance(e, RequestRejected))

    async def check_health(self) -> None:
        self.watch.check()
        await self.engine.check_health()

    async def __del__(self):
        if getattr(self, "sampler", None) is not None:
            self.sampler.stop.set()
        engine = getattr(self, "engine", None)  # None: __init__ failed before the engine was built
        if engine is not None:
            await engine.shutdown()
