"""The one retry loop: how many tries, which errors, what pause, and the last error when none is left."""

import asyncio

import pytest

from contract.retry import Backoff, TryAgain, retry


class Flaky:
    """Fails its first `failures` calls with `error`, then answers."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


def run(call, **kwargs):
    retried = []
    kwargs.setdefault("backoff", Backoff(first_s=0.001))
    result = asyncio.run(retry(call, on_retry=lambda n, e, pause: retried.append((n, pause)), **kwargs))
    return result, retried


def test_retries_until_an_answer_and_reports_each_retry():
    call = Flaky(2, TryAgain("busy"))
    assert run(call, tries=3)[0] == "answer" and call.calls == 3
    assert [n for n, _ in run(Flaky(2, TryAgain("busy")), tries=3)[1]] == [1, 2]


def test_the_last_error_is_raised_when_no_try_is_left():
    call = Flaky(5, TryAgain("still busy"))
    with pytest.raises(TryAgain, match="still busy"):
        run(call, tries=3)
    assert call.calls == 3


def test_other_errors_are_not_retried():
    call = Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        run(call, tries=3)
    assert call.calls == 1
    assert run(Flaky(1, KeyError("x")), tries=2, retry_on=(KeyError,))[0] == "answer"


def test_pauses_grow_with_jitter_stay_capped_and_follow_retry_after():
    backoff = Backoff(first_s=1.0, max_s=5.0)
    for n, top in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        pauses = [backoff.pause(n) for _ in range(50)]
        assert all(top / 2 <= p <= top for p in pauses) and len(set(pauses)) > 1
    assert backoff.pause(1, asked_s=3.0) == 3.0 and backoff.pause(1, asked_s=600.0) == 5.0
    _, retried = run(Flaky(1, TryAgain("slow down", after_s=0.02)), tries=2)
    assert retried == [(1, 0.02)]
