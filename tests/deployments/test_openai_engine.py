"""The `openai` engine against a stand-in OpenAI-compatible server on loopback (a real HTTP server in a thread,
scripted per test): the request body vLLM's server needs, retries, timeouts, the concurrency limit, errors.
No Ray: the engine is a plain object here; tests/deployments/test_openai_vllm.py runs it inside the pipeline."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest

from contract.audio import decode
from contract.config import EngineConfig, SamplingConfig
from contract.formats import assistant_prefills, get_format
from contract.messages import GenerationRequest
from deployments.engines.base import RequestFailed, RequestRejected
from tests.conftest import free_port, official_step_audio_r1
from tests.openai_stub import KEY, Stub


@pytest.fixture(scope="module")
def stub():
    with Stub() as s:
        yield s


@pytest.fixture(autouse=True)
def _reset(stub, monkeypatch):
    deadline = time.monotonic() + 10
    while stub.in_flight:  # a request a test gave up on (a timeout) may still be in the stub
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stub.script.clear()
    stub.received.clear()
    stub.max_in_flight = 0
    stub.content = "Hello.</think>\nAn answer.<|EOT|>"
    monkeypatch.setenv("TEST_OPENAI_ENGINE_KEY", KEY)


def engine(stub, family="step_audio_r1", **server):
    from deployments.engines.openai import OpenAIEngine

    settings = {"base_url": stub.url, "model": "served-model", "api_key_env": "TEST_OPENAI_ENGINE_KEY",
                "max_retries": 2, "backoff_s": 0.01, "timeout_s": 10, **server}
    return OpenAIEngine(EngineConfig(kind="openai", family=family, model_name="step-audio-r1", openai=settings))


def clip(seconds=1.5, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def request(audio=None, *, prefill="think", system=None, question="What is said?", **sampling):
    sampling = {"temperature": 0.0, "max_tokens": 64, "seed": 3, **sampling}
    return GenerationRequest("item/0/task", [clip() if audio is None else audio], question, system=system,
                             prefill=prefill, sampling=SamplingConfig(**sampling))


def as_template_messages(body: dict) -> list[dict]:
    """The messages as vLLM's chat utils hand them to a template: an input_audio part becomes an audio item."""
    out = []
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "audio"} if p["type"] == "input_audio" else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out


@pytest.mark.parametrize("prefill", ["think", "forced", "off"])
def test_body_renders_the_in_process_prompt(stub, prefill):
    audio = clip(2.0)
    e = engine(stub)
    result = asyncio.run(e.generate(request(audio, prefill=prefill, system="You are an expert.")))
    ((body, headers),) = stub.received
    # What vLLM's server needs for Step-Audio-R1 (notes: "Over HTTP").
    assert body["model"] == "served-model" and body["skip_special_tokens"] is False
    assert body["stop_token_ids"] == [151665]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": assistant_prefills(get_format("step_audio_r1"))[
        prefill]}
    assert (body["temperature"], body["max_tokens"], body["seed"], body["top_p"]) == (0.0, 64, 3, 1.0)
    assert headers["authorization"] == f"Bearer {KEY}" and headers["x-request-id"] == "item/0/task"
    # The audio arrives losslessly, as the in-process engine would see it.
    (part,) = [p for p in body["messages"][1]["content"] if p["type"] == "input_audio"]
    assert part["input_audio"]["format"] == "wav"
    assert np.array_equal(decode(base64.b64decode(part["input_audio"]["data"])), audio)
    # vLLM renders the model's template over these messages: the same prompt as the in-process engine.
    fmt = get_format("step_audio_r1")
    assert official_step_audio_r1(as_template_messages(body), add_generation_prompt=False) == fmt.render_prompt(
        system="You are an expert.", question="What is said?", num_audio=1, prefill=prefill)
    # No reasoning parser on the server: split here, as the in-process engine splits.
    expected = fmt.split_output(stub.content, prefill)
    assert (result.reasoning, result.answer, result.truncated) == (expected.reasoning, expected.answer,
                                                                    expected.truncated)
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (40, 9, "stop")
    assert result.error_class is None and result.latency_s > 0


def test_a_window_is_several_audio_parts_of_one_message_and_the_budget_is_the_servers(stub):
    e = engine(stub)
    # vLLM's server states its context in /v1/models; the items limit it does not state (unbounded here).
    assert (e.info.max_model_len, e.info.max_audio_items) == (16384, None)
    items = [clip(25.0, seed=i) for i in range(3)]
    asyncio.run(e.generate(GenerationRequest("rec/part0/task", items, "Summarize.", recording=True)))
    ((body, _),) = stub.received
    parts = body["messages"][-2]["content"] if body["messages"][-1]["role"] == "assistant" else \
        body["messages"][-1]["content"]
    # As StepFun's client sends a recording: every item an input_audio part, in order, then the question.
    assert [p["type"] for p in parts] == ["input_audio"] * 3 + ["text"]
    for part, item in zip(parts, items):
        assert np.array_equal(decode(base64.b64decode(part["input_audio"]["data"])), item)


def test_assistant_prefills_continue_the_template():
    fmt = get_format("step_audio_r1")
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Q"}]}]
    for mode, text in assistant_prefills(fmt).items():
        continued = official_step_audio_r1(chat + [{"role": "assistant", "content": text}], add_generation_prompt=False)
        assert continued == fmt.render_prompt(system=None, question="Q", num_audio=1, prefill=mode)
    assert assistant_prefills(get_format("qwen2_audio")) == {"think": "", "off": ""}
    assert assistant_prefills(get_format("whisper")) == {"off": ""}


def test_off_without_a_prefill_text_says_so(stub):
    asyncio.run(engine(stub, family="qwen2_audio").generate(request(prefill="off")))
    ((body, _),) = stub.received
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][-1]["role"] == "user" and "continue_final_message" not in body
    assert body["stop"] == ["<|im_end|>"] and body["skip_special_tokens"] is True


def test_reasoning_split_by_the_server_is_kept(stub):
    message = {"role": "assistant", "content": None, "reasoning_content": "Partial thoughts"}
    stub.script.append((200, {"choices": [{"message": message, "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 64}}, None, 0.0))
    result = asyncio.run(engine(stub).generate(request()))
    assert (result.reasoning, result.answer, result.truncated, result.finish_reason) == (
        "Partial thoughts", None, True, "length")


def test_retries_429_and_5xx_then_answers(stub):
    stub.script.extend([(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}, 0.0),
                        (503, {"error": {"message": "busy"}}, None, 0.0)])
    result = asyncio.run(engine(stub).generate(request()))
    assert result.answer == "An answer." and len(stub.received) == 3


def test_gives_up_after_the_retries_with_a_retryable_failure(stub):
    stub.script.extend([(503, {"error": {"message": "engine overloaded"}}, None, 0.0)] * 3)
    with pytest.raises(RequestFailed, match="503: engine overloaded"):
        asyncio.run(engine(stub).generate(request()))
    assert len(stub.received) == 3  # max_retries 2


def test_bad_request_is_rejected_at_once(stub):
    stub.script.append((400, {"error": {"message": "cannot decode the audio"}}, None, 0.0))
    with pytest.raises(RequestRejected, match="400.*cannot decode the audio"):
        asyncio.run(engine(stub).generate(request()))
    assert len(stub.received) == 1


def test_too_long_item_is_rejected_before_sending(stub):
    with pytest.raises(RequestRejected, match="26.00 s, over step_audio_r1's 25 s"):
        asyncio.run(engine(stub).generate(request(clip(26.0))))
    assert not stub.received


def test_timeout_is_a_retryable_failure(stub):
    stub.script.append((200, None, None, 2.0))
    with pytest.raises(RequestFailed, match="within engine.openai.timeout_s=0.3"):
        asyncio.run(engine(stub, timeout_s=0.3).generate(request()))


def test_concurrency_limit(stub):
    stub.script.extend([(200, None, None, 0.2)] * 10)
    e = engine(stub, max_concurrency=3)

    async def many():
        return await asyncio.gather(*(e.generate(request()) for _ in range(10)))

    results = asyncio.run(many())
    assert all(r.answer == "An answer." for r in results)
    assert stub.max_in_flight == 3
    assert e.running() is None  # the server's batch is out of sight: occupancy unknown, not zero


def test_server_that_cannot_serve_stops_the_engine_at_start(stub, monkeypatch):
    from deployments.engines.openai import ServerUnavailable

    with pytest.raises(ServerUnavailable, match="cannot reach"):
        engine(stub, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with pytest.raises(ServerUnavailable, match=r"serves \['served-model'\], not 'other'"):
        engine(stub, model="other")
    monkeypatch.setenv("TEST_OPENAI_ENGINE_KEY", "wrong")
    with pytest.raises(ServerUnavailable, match="refused the API key"):
        engine(stub)
    monkeypatch.delenv("TEST_OPENAI_ENGINE_KEY")
    with pytest.raises(ServerUnavailable, match="TEST_OPENAI_ENGINE_KEY, which is not set"):
        engine(stub)


def test_health(stub):
    from deployments.engines.openai import ServerUnavailable

    e = engine(stub)
    asyncio.run(e.check_health())
    e._base_url = f"http://127.0.0.1:{free_port()}/v1"  # the server went away
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        asyncio.run(e.check_health())
