"""A replica's metrics: requests in flight, engine latency, outcomes and tokens, for batch and HTTP callers alike.

Made with `ray.serve.metrics`, which adds Serve's `deployment`, `replica` and `application` labels when
created inside a replica, so every series is per replica. Scraped from Ray's metrics endpoint with the `ray_`
prefix (and `_total` on counters). Serve's own `ray_serve_replica_processing_queries` counts handle calls
(one per pipeline request) and HTTP requests alike; these count what reached the engine.

- `ray_audio_serve_requests_in_flight` (gauge; model): requests this replica's engine is working on.
- `ray_audio_serve_requests_total` (counter; model, outcome): requests finished; outcome is `ok`, the error
  class (`RequestTimeout`, ...) or `cancelled` (the caller went away).
- `ray_audio_serve_request_latency_seconds` (histogram; model, outcome): from the request reaching the
  replica to its result.
- `ray_audio_serve_prompt_tokens_total`, `ray_audio_serve_completion_tokens_total` (counters; model): tokens
  of answered requests.
- `ray_audio_serve_engine_occupancy` (gauge; model): the engine's own count of running sequences over its
  capacity (vLLM's `max_num_seqs`, whisper's workers), sampled every 0.5 s (deployments.occupancy); absent for
  an engine that cannot count (openai).

Use: `self.metrics = ReplicaMetrics(model_name)` once the engine is up, then
`return await self.metrics.measure(self._generate_one(request))` for each request, and
`async for piece in self.metrics.measure_stream(pieces)` around a streamed answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing

from contract.messages import LATENCY_BOUNDARIES, GenerationResult


class ReplicaMetrics:
    def __init__(self, model: str):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.tags = {"model": model}
        self.in_flight = Gauge("audio_serve_requests_in_flight", tag_keys=("model",),
                               description="Requests this replica's engine is working on.")
        self.requests = Counter("audio_serve_requests", tag_keys=("model", "outcome"),
                                description="Requests finished, by outcome: ok or the error class.")
        self.latency = Histogram("audio_serve_request_latency_seconds", boundaries=LATENCY_BOUNDARIES,
                                 tag_keys=("model", "outcome"),
                                 description="Time from a request reaching the replica to its result.")
        self.prompt_tokens = Counter("audio_serve_prompt_tokens", tag_keys=("model",),
                                     description="Prompt tokens of answered requests.")
        self.completion_tokens = Counter("audio_serve_completion_tokens", tag_keys=("model",),
                                         description="Generated tokens of answered requests.")
        self.occupancy = Gauge("audio_serve_engine_occupancy", tag_keys=("model",),
                               description="Sequences the engine runs, by its own count, over its capacity.")
        self._in_flight = 0

    def request_started(self) -> float:
        """Call when a request starts; pass what it returns to `request_finished`."""
        self._in_flight += 1
        self.in_flight.set(self._in_flight, tags=self.tags)
        return time.perf_counter()

    def engine_occupancy(self, share: float) -> None:
        """A sample of the engine's running sequences over its capacity (deployments.occupancy)."""
        self.occupancy.set(share, tags=self.tags)

    def request_finished(self, started: float, result: GenerationResult | None = None,
                         error: BaseException | None = None) -> None:
        """Call once per started request, with its result or the exception that ended it."""
        self._in_flight -= 1
        self.in_flight.set(self._in_flight, tags=self.tags)
        if result is not None:
            outcome = result.error_class or "ok"
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            outcome = "cancelled"  # the caller went away
        else:
            outcome = type(error).__name__ if error is not None else "unknown"
        tags = {**self.tags, "outcome": outcome}
        self.requests.inc(1, tags=tags)
        self.latency.observe(time.perf_counter() - started, tags=tags)
        if result is not None and not result.error_class:
            if result.prompt_tokens:
                self.prompt_tokens.inc(result.prompt_tokens, tags=self.tags)
            if result.completion_tokens:
                self.completion_tokens.inc(result.completion_tokens, tags=self.tags)

    async def measure(self, answer: Awaitable[GenerationResult]) -> GenerationResult:
        """Await one request's result, counting it (an exception is counted under its class and re-raised)."""
        started = self.request_started()
        try:
            result = await answer
        except BaseException as e:
            self.request_finished(started, error=e)
            raise
        self.request_finished(started, result)
        return result

    async def measure_stream(self, pieces: AsyncIterator) -> AsyncIterator:
        """Pass a streamed answer's pieces (`StreamDelta`) through, counting it; its last piece has the result."""
        started = self.request_started()
        result, error = None, None
        try:
            # Closed with this one: a caller that stops reading frees what the answer holds (an engine slot) now,
            # not when the garbage collector finds it.
            async with aclosing(pieces):
                async for piece in pieces:
                    if getattr(piece, "result", None) is not None:
                        result = piece.result
                    yield piece
        except BaseException as e:
            error = e
            raise
        finally:
            # A caller that stops reading early (client gone) closes the generator: GeneratorExit.
            self.request_finished(started, result, error if result is None else None)
