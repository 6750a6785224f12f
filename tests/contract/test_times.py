"""One time parser: the `input.since` filter and the listed files' modification times read a time the same way,
a time without a zone as UTC."""

from datetime import datetime, timedelta, timezone

import pytest

from contract.config import since_time
from contract.times import parse_time
from pipeline.sources import modified

UTC = timezone.utc


@pytest.mark.parametrize("text, expected", [
    ("2026-11-21T02:00:00", datetime(2026, 11, 21, 2, tzinfo=UTC)),
    ("2026-11-21T02:00:00Z", datetime(2026, 11, 21, 2, tzinfo=UTC)),
    ("2026-11-21T03:00:00+01:00", datetime(2026, 11, 21, 2, tzinfo=UTC)),
    ("2026-11-21", datetime(2026, 11, 21, tzinfo=UTC)),
])
def test_since_and_a_stores_modified_time_agree_naive_is_utc(text, expected):
    assert parse_time(text) == since_time(text) == modified({"LastModified": text}) == expected


def test_a_naive_datetime_and_a_timestamp_are_utc_too():
    assert modified({"LastModified": datetime(2026, 1, 1, 12)}) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert modified({"mtime": 0}) == datetime(1970, 1, 1, tzinfo=UTC)


def test_not_a_time_names_the_text():
    with pytest.raises(ValueError, match="'yesterday' is neither"):
        since_time("yesterday")
