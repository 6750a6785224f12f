"""Text the job writes (into a row, a log line or the report) kept bounded and printable.

A value that is not text (bytes, a struct holding bytes, as a Hugging Face audio column is) is summarized, never
repr'd whole: one such value must not put hundreds of kilobytes into every error row and the report.
"""

from __future__ import annotations

from typing import Any

LIMIT = 500  # characters: a long URI or a one-line error fits; a document does not


def summary(value: Any, limit: int = LIMIT) -> str:
    """`value` as at most about `limit` printable characters: text as it is (control characters escaped), bytes
    as their length, containers item by item, anything longer cut with the count of what was left out."""
    text = _summarized(value, limit)
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit + 1])
    if len(text) > limit:
        return text[:limit] + f"... ({_length(value)} in all)"
    return text


def _summarized(value: Any, budget: int) -> str:
    if isinstance(value, str):
        return value[:budget + 1]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        parts, used = [], 0
        for key, item in value.items():
            if used > budget:
                break
            part = f"{key!s}: {_summarized(item, budget - used)}"
            parts.append(part)
            used += len(part) + 2
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        parts, used = [], 0
        for item in value:
            if used > budget:
                break
            part = _summarized(item, budget - used)
            parts.append(part)
            used += len(part) + 2
        return "[" + ", ".join(parts) + "]"
    return repr(value)[:budget + 1]


def _length(value: Any) -> str:
    return f"{len(value)} characters" if isinstance(value, str) else f"{len(value)} items" \
        if isinstance(value, (dict, list, tuple)) else "more"
