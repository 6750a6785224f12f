"""The one retry loop: try a call again after a pause that grows, for calls that fail in passing (a server
that is overloaded or restarting, a replica that died and is being replaced)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class TryAgain(Exception):
    """An attempt failed in a way that trying again may fix; `after_s` is the pause the other side asked for
    (HTTP Retry-After), if it did."""

    def __init__(self, message: str, after_s: float | None = None):
        super().__init__(message)
        self.after_s = after_s


@dataclass(frozen=True)
class Backoff:
    """The pause before try `n + 1`: `first_s` x 2^(n - 1), at most `max_s`, jittered so that callers that
    failed together do not come back together."""

    first_s: float
    max_s: float = 60.0

    def pause(self, n: int, asked_s: float | None = None) -> float:
        if asked_s is not None:
            return min(max(asked_s, 0.0), self.max_s)
        return min(self.first_s * 2 ** (n - 1), self.max_s) * (0.5 + random.random() / 2)


async def retry(call: Callable[[], Awaitable[T]], *, tries: int, backoff: Backoff,
                retry_on: tuple[type[BaseException], ...] = (TryAgain,),
                on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """`await call()`, up to `tries` times while it raises one of `retry_on`; then that last error is raised.
    `on_retry(n, error, pause_s)` is told of each failed try `n` that is followed by another."""
    for n in range(1, tries + 1):
        try:
            return await call()
        except retry_on as e:
            if n == tries:
                raise
            pause = backoff.pause(n, getattr(e, "after_s", None))
            if on_retry is not None:
                on_retry(n, e, pause)
            await asyncio.sleep(pause)
    raise ValueError(f"tries must be at least 1, not {tries}")
