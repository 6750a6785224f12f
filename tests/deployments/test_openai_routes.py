"""The routes' reasoning output for a reasoning model (Step-Audio-R1's format), which the tiny random model can't
be made to produce: a stand-in backend replays a Step-Audio-R1 answer through the real routes, in process."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from contract.config import HTTPConfig
from contract.formats import get_format
from contract.messages import GenerationResult, ModelInfo
from deployments.engines.base import StreamDelta
from deployments.openai.routes import build_app

R1 = get_format("step_audio_r1")
TEXT = " the caller says hello and asks for help.\n</think>\n\nTRANSCRIPTION: Hello, can you help me?<|EOT|>"


class Replay:
    """A backend that answers every request with TEXT, split as the format splits it, in 5-character pieces."""

    http = HTTPConfig()
    api_key = None
    model_info = ModelInfo("Step-Audio-R1", "step_audio_r1", 25.0)

    def __init__(self):
        self.requests = []

    def result(self, request) -> GenerationResult:
        parsed = R1.split_output(TEXT, request.prefill)
        return GenerationResult(request.request_id, text=TEXT, reasoning=parsed.reasoning, answer=parsed.answer,
                                finish_reason="stop", prompt_tokens=330, completion_tokens=21)

    async def generate_one(self, request):
        self.requests.append(request)
        return self.result(request)

    async def stream_one(self, request):
        self.requests.append(request)
        for i in range(0, len(TEXT), 5):
            yield StreamDelta(TEXT[i:i + 5])
        yield StreamDelta("", self.result(request))

    async def check_health(self):
        pass


@pytest.fixture
def app():
    backend = Replay()
    return backend, TestClient(build_app(backend))


BODY = {"model": "Step-Audio-R1", "messages": [
    {"role": "user", "content": "What is said?"},
    {"role": "assistant", "content": "<think>\nOkay,"}], "continue_final_message": True, "add_generation_prompt": False}


def test_reasoning_beside_the_answer(app):
    backend, client = app
    response = client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert backend.requests[0].prefill == "forced"
    assert message["reasoning_content"] == message["reasoning"] == "Okay, the caller says hello and asks for help."
    assert message["content"] == "TRANSCRIPTION: Hello, can you help me?"
    assert response.json()["usage"] == {"prompt_tokens": 330, "completion_tokens": 21, "total_tokens": 351}


def test_streamed_reasoning_then_content(app):
    _, client = app
    with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasoning = [d["reasoning_content"] for d in deltas if d.get("reasoning_content")]
    content = [d["content"] for d in deltas if d.get("content")]
    assert len(reasoning) > 1 and len(content) > 1  # streamed, not one piece each
    assert "".join(reasoning) == "Okay, the caller says hello and asks for help."
    assert "".join(content) == "TRANSCRIPTION: Hello, can you help me?"
    # All reasoning comes before any content; the stop token is never sent.
    kinds = ["r" if d.get("reasoning_content") else "c" for d in deltas if d.get("reasoning_content") or
             d.get("content")]
    assert kinds == sorted(kinds, reverse=True)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]


def test_unknown_routes_are_openai_style(app):
    _, client = app
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/models/Step-Audio-R1").json()["id"] == "Step-Audio-R1"
    assert client.get("/v1/models/other").status_code == 404
