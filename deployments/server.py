"""The Serve deployment: one engine per replica, answering batches of requests from the pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.engines import create_engine
from deployments.engines.base import RequestRejected
from pipeline.config import EngineConfig
from pipeline.requests import GenerationRequest, GenerationResult, ModelInfo


class RequestTimeout(Exception):
    """The engine gave no answer in time; the request was cancelled in the engine."""


class EngineServer:
    """Holds the replica's engine. Wrapped by `serve.deployment` in `deployments.app`."""

    def __init__(self, engine: dict[str, Any], request_timeout_s: float):
        self.engine = create_engine(EngineConfig.model_validate(engine))
        self.request_timeout_s = request_timeout_s

    async def info(self) -> ModelInfo:
        return self.engine.info

    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch concurrently, so the engine sees every request of it at once."""
        return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        try:
            return await asyncio.wait_for(self.engine.generate(request), self.request_timeout_s)
        except RequestRejected as e:
            return GenerationResult.failure(request.request_id, e, retryable=False)
        except asyncio.TimeoutError:
            timeout = RequestTimeout(f"no answer within deployment.request_timeout_s={self.request_timeout_s} s")
            return GenerationResult.failure(request.request_id, timeout, retryable=True)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self):
        await self.engine.shutdown()
