"""Retry and quarantine in the inference stage, with a stand-in for a replica that dies on one input.

No real engine can be made to crash on a chosen input here, so `HandleWhoseReplicaDiesOnPoison` stands in
for the Serve handle; everything else is the real stage. Killing real replicas is tested in test_resume.
"""

import asyncio

import numpy as np
import pyarrow as pa
import pytest
from ray.exceptions import ActorDiedError

import pipeline.infer
from contract.messages import GenerationResult
from contract.retry import Backoff
from pipeline.answered import row_key
from pipeline.infer import Infer
from pipeline.rows import REQUEST_SCHEMA


class HandleWhoseReplicaDiesOnPoison:
    """Mock of a DeploymentHandle: a batch holding a 'poison' item loses its replica (ActorDiedError)."""

    def __init__(self):
        self.calls = []
        self.generate = self

    def remote(self, requests):
        self.calls.append([r.request_id for r in requests])

        async def answer():
            if any("poison" in r.request_id for r in requests):
                raise ActorDiedError()
            return [GenerationResult(r.request_id, answer="ok", finish_reason="stop") for r in requests]

        return answer()


def stage(**kwargs) -> Infer:
    """The real stage, built as pipeline.run builds it, with the stand-in handed in as its handle."""
    return Infer(handle=HandleWhoseReplicaDiesOnPoison(), tasks=[{"name": "t", "question": "q"}], model="m",
                 run_id="r", attempts=2, **kwargs)


def items(*ids) -> pa.Table:
    audio = np.zeros(1600, np.float32).tobytes()
    return pa.Table.from_pylist([{"item_id": i, "source_uri": f"/{i}.wav", "segment_index": 0, "segment_count": 1,
                                  "start_s": 0.0, "end_s": 0.1, "audio": [audio], "task": "t", "prompt": "q",
                                  "question": "q", "scope": "item", "request_index": 0, "request_count": 1,
                                  "recording_s": 0.1} for i in ids],
                                schema=REQUEST_SCHEMA)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(pipeline.infer, "BACKOFF", Backoff(first_s=0.0))


def test_poison_item_is_quarantined_and_the_rest_answered():
    infer = stage()
    out = asyncio.run(infer(items("a", "poison", "c"))).to_pylist()
    by_id = {r["item_id"]: r for r in out}
    assert len(out) == 3
    assert by_id["a"]["answer"] == by_id["c"]["answer"] == "ok"
    poison = by_id["poison"]
    assert poison["error_class"] == "Quarantined" and poison["error_stage"] == "infer"
    assert poison["retryable"] is False and "ActorDiedError" in poison["error"]
    # Bounded: the batch twice, then each item alone (the poison twice): 2 + 2 + 1 + 1 calls.
    assert len(infer.handle.calls) == 6


def test_rows_already_written_are_not_asked_again():
    infer = stage(skip={row_key("a", 0, None, "t", "q")})
    out = asyncio.run(infer(items("a", "b"))).to_pylist()
    assert [r["item_id"] for r in out] == ["b"]
    assert infer.handle.calls == [["b/0/t"]]
