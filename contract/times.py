"""Times as the job compares them: aware datetimes, a time without a zone taken as UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def as_utc(value: datetime) -> datetime:
    """`value`, with UTC as its zone if it has none."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time (`Z` accepted), UTC unless it names a zone; ValueError if it is not one."""
    return as_utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
