"""The interface every engine fits: async generate (and stream) for one request, its running count, health,
shutdown."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from contract.audio import SAMPLE_RATE
from contract.config import EngineConfig
from contract.formats import ModelFormat, get_format
from contract.messages import GenerationRequest, GenerationResult, ModelInfo


class RequestRejected(Exception):
    """The request cannot be served as it is (audio too long, prompt over the context): retrying won't help."""


class RequestFailed(Exception):
    """This request failed but the engine is fine, and sending it again may work (a remote server timed out or
    stayed overloaded through every retry)."""


def checked_prefill(fmt: ModelFormat, prefill: str | None) -> str:
    """The prefill mode to use; RequestRejected for one the model family lacks."""
    try:
        return fmt.check_prefill(prefill)
    except ValueError as e:
        raise RequestRejected(str(e)) from None


def check_item_length(fmt: ModelFormat, index: int, samples: int) -> None:
    """RequestRejected for an audio item (16 kHz samples) longer than the model family takes."""
    seconds = samples / SAMPLE_RATE
    if seconds > fmt.max_item_s:
        raise RequestRejected(f"audio item {index} is {seconds:.2f} s, over {fmt.family}'s {fmt.max_item_s:g} s "
                              "per item")


@dataclass
class StreamDelta:
    """A piece of a streamed answer: the text generated since the previous piece. The last piece also carries
    the whole outcome (`result`), as `generate` would have returned it."""

    text: str
    result: GenerationResult | None = None


class Engine(abc.ABC):
    """One model engine per Serve replica; heavy set-up happens in `__init__`.

    `concurrency`: how many requests the engine works on at once (None: no limit of its own), the capacity
    `running` is measured against (occupancy). The replica holds the others back until a slot frees, so a
    request's `latency_s` is the engine's own time and its wait is `queue_s` (deployments.server), unless
    `queues_itself`: the engine takes every request the replica has and queues the rest itself, ready to start
    (vLLM's scheduler); it then reports that wait as its result's `queue_s`, which the replica moves out of
    `latency_s`."""

    concurrency: int | None = None
    queues_itself: bool = False

    def __init__(self, config: EngineConfig):
        self.config = config
        self._format = get_format(config.family)

    @property
    def info(self) -> ModelInfo:
        """The model's name, family, longest audio item and request budget (none known by default)."""
        return ModelInfo(self.config.model_name, self.config.family, self._format.max_item_s,
                         max_audio_items=self._format.max_items_per_request)

    async def text_tokens(self, system: str | None, question: str, prefill: str | None, up_to: int) -> list[int]:
        """The prompt's text tokens when it holds 0, 1, ... `up_to` audio items (placeholders not counted: they
        expand to the items' audio tokens), for packing a recording into requests. Engines without a tokenizer
        count UTF-8 bytes: at least the tokens of any byte-level tokenizer, so a packing from them still fits."""
        fmt, mode = self._format, checked_prefill(self._format, prefill)
        return [len(fmt.render_prompt(system=system, question=question, num_audio=n, prefill=mode).encode())
                for n in range(up_to + 1)]

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Answer one request. Raise `RequestRejected` for a request that can never succeed, `RequestFailed` for
        one that may succeed if sent again; any other exception means the engine itself is in trouble."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Answer one request piece by piece, raising as `generate` does. By default the whole answer is one
        piece; engines that generate token by token override this."""
        result = await self.generate(request)
        yield StreamDelta(result.text or "", result)

    def running(self) -> int | None:
        """Sequences the engine is running now, by its own count (at most `concurrency`); None when it cannot
        tell (a remote server): unknown, not zero. Read from the replica's sampling thread: cheap, no I/O."""
        return None

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""

    async def shutdown(self) -> None:
        """Release the engine's resources."""
