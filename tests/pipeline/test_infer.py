"""Retry and quarantine in the inference stage, with a stand-in for a replica that dies on one input.

No real engine can be made to crash on a chosen input here, so `HandleWhoseReplicaDiesOnPoison` stands in
for the Serve handle; everything else is the real stage. Killing real replicas is tested in test_resume.
"""

import asyncio

import pytest
from ray.exceptions import ActorDiedError

import pipeline.infer
from contract.messages import GenerationResult
from contract.retry import Backoff
from pipeline.answered import row_key
from pipeline.infer import Infer
from tests.conftest import request_rows


class HandleWhoseReplicaDiesOnPoison:
    """Mock of a DeploymentHandle: a request for a 'poison' item loses its replica (ActorDiedError)."""

    def __init__(self):
        self.calls = []
        self.generate_one = self

    def remote(self, request):
        self.calls.append(request.request_id)

        async def answer():
            if "poison" in request.request_id:
                raise ActorDiedError()
            return GenerationResult(request.request_id, answer="ok", finish_reason="stop")

        return answer()


def stage(**kwargs) -> Infer:
    """The real stage, built as pipeline.run builds it, with the stand-in handed in as its handle."""
    return Infer(handle=HandleWhoseReplicaDiesOnPoison(), tasks=[{"name": "t", "question": "q"}], model="m",
                 run_id="r", attempts=2, **kwargs)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(pipeline.infer, "BACKOFF", Backoff(first_s=0.0))


def test_poison_item_is_quarantined_and_the_rest_answered():
    infer = stage()
    out = asyncio.run(infer(request_rows("a", "poison", "c"))).to_pylist()
    by_id = {r["item_id"]: r for r in out}
    assert len(out) == 3
    assert by_id["a"]["answer"] == by_id["c"]["answer"] == "ok"
    poison = by_id["poison"]
    assert poison["error_class"] == "Quarantined" and poison["error_stage"] == "infer"
    assert poison["retryable"] is False and "ActorDiedError" in poison["error"]
    # Bounded: each request on its own, the poison twice (attempts=2).
    assert sorted(infer.handle.calls) == ["a/0/t", "c/0/t", "poison/0/t", "poison/0/t"]


def test_rows_already_written_are_not_asked_again():
    infer = stage(skip={row_key("a", 0, None, "t", "q")})
    out = asyncio.run(infer(request_rows("a", "b"))).to_pylist()
    assert [r["item_id"] for r in out] == ["b"]
    assert infer.handle.calls == ["b/0/t"]
