"""The interface every engine fits: async generate for one request, health, shutdown."""

from __future__ import annotations

import abc

from pipeline.config import EngineConfig
from pipeline.requests import GenerationRequest, GenerationResult, ModelInfo


class RequestRejected(Exception):
    """The request cannot be served as it is (audio too long, prompt over the context): retrying won't help."""


class Engine(abc.ABC):
    """One model engine per Serve replica; heavy set-up happens in `__init__`."""

    def __init__(self, config: EngineConfig):
        self.config = config

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """The model's name, family and longest audio item."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Answer one request. Raise `RequestRejected` for a request that can never succeed;
        any other exception means the engine itself is in trouble."""

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""

    async def shutdown(self) -> None:
        """Release the engine's resources."""
