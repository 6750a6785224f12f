"""The Serve deployment: one engine per replica, answering batches of requests from the pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from deployments.engines import create_engine
from deployments.engines.base import RequestRejected
from pipeline.config import EngineConfig
from pipeline.requests import GenerationRequest, GenerationResult, ModelInfo

logger = logging.getLogger("ray.serve")


class EngineServer:
    """Holds the replica's engine. Wrapped by `serve.deployment` in `deployments.app`."""

    def __init__(self, engine: dict[str, Any]):
        self.engine = create_engine(EngineConfig.model_validate(engine))

    async def info(self) -> ModelInfo:
        return self.engine.info

    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch concurrently, so the engine sees every request of it at once."""
        return list(await asyncio.gather(*(self._generate_one(r) for r in requests)))

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        try:
            return await self.engine.generate(request)
        except RequestRejected as e:
            return GenerationResult.failure(request.request_id, e, retryable=False)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self):
        await self.engine.shutdown()
