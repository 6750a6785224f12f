"""Packing a recording's consecutive audio items into requests that fit the engine's budget.

A request's prompt is its text tokens (which depend on how many items it holds: each item has a placeholder,
and some formats number them) plus each item's audio tokens (the family's formula, `ModelFormat.audio_tokens`).
A request fits when prompt + the task's `max_tokens` <= `max_model_len` and it holds at most `max_items` items.
Windows are consecutive, cover every item once (no gap, no overlap) and are as few as fit: each window takes
items while the next one still fits.

Pure functions; no Ray, no engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """What one request may hold, as the running engine has it (`contract.messages.ModelInfo`)."""

    max_model_len: int | None  # prompt + generated tokens; None: unbounded
    max_items: int | None  # audio items per request; None: unbounded


class OverBudget(Exception):
    """Not even one item fits a request: its prompt plus the task's max_tokens is over the engine's context."""


def pack(audio_tokens: Sequence[int], *, budget: Budget, max_tokens: int,
         text_tokens: Callable[[int], int]) -> list[tuple[int, int]]:
    """Windows `[(first, end), ...]` (item indices, end exclusive) covering `audio_tokens` in order.

    `audio_tokens[i]` is item i's audio tokens; `text_tokens(n)` the prompt's text tokens when it holds n items
    (only asked when the context is bounded). Raises OverBudget when an item does not fit a request alone.
    """
    windows: list[tuple[int, int]] = []
    first = 0
    while first < len(audio_tokens):
        end, audio = first, 0
        while end < len(audio_tokens):
            n = end - first + 1
            if budget.max_items is not None and n > budget.max_items:
                break
            if budget.max_model_len is not None:
                need = text_tokens(n) + audio + audio_tokens[end] + max_tokens
                if need > budget.max_model_len:
                    if n == 1:
                        raise OverBudget(
                            f"item {end} alone needs a prompt of {text_tokens(1)} text + {audio_tokens[end]} audio "
                            f"tokens plus max_tokens {max_tokens} = {need} tokens, over the engine's max_model_len "
                            f"{budget.max_model_len}")
                    break
            audio += audio_tokens[end]
            end += 1
        if end == first:  # max_items < 1: an engine that takes no audio
            raise OverBudget(f"the engine takes {budget.max_items} audio items per request")
        windows.append((first, end))
        first = end
    return windows
