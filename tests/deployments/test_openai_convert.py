"""Chat messages -> GenerationRequest and streamed text -> reasoning/answer pieces, without Ray or HTTP."""

from __future__ import annotations

import asyncio
import base64

import pytest

from contract.audio import wav_base64
from contract.audio import decode
from contract.config import HTTPConfig
from contract.formats import assistant_prefills, get_format
from contract.messages import GenerationResult
from deployments.openai.convert import to_generation_request
from deployments.openai.protocol import APIError, parse_request
from deployments.openai.stream import StreamSplitter
from tests.conftest import SAMPLES

R1 = get_format("step_audio_r1")
QWEN = get_format("qwen2_audio")


def convert(body: dict, fmt=R1, http=HTTPConfig()):
    import json

    return asyncio.run(to_generation_request(parse_request(json.dumps(body).encode()), fmt, http, "rid"))


def audio_part(name="greeting.wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode((SAMPLES / name).read_bytes()).decode(),
                                                   "format": "wav"}}


def test_messages_become_one_request():
    request = convert({"messages": [
        {"role": "system", "content": "You are an expert."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "Listen:"}, audio_part(),
                                     {"type": "text", "text": "What is said?"}, audio_part("story.ogg")]}],
        "temperature": 0.2, "max_completion_tokens": 99, "max_tokens": 5, "seed": 7, "top_p": 0.5})
    assert request.system == "You are an expert.\nAnswer in English."
    assert request.question == "Listen:\nWhat is said?"
    assert [len(a) for a in request.audio] == [len(decode((SAMPLES / n).read_bytes()))
                                               for n in ("greeting.wav", "story.ogg")]
    assert request.prefill == "think" and request.request_id == "rid"
    s = request.sampling
    assert (s.temperature, s.max_tokens, s.seed, s.top_p, s.repetition_penalty) == (0.2, 99, 7, 0.5, 1.0)


def test_defaults_and_plain_string_content():
    request = convert({"messages": [{"role": "user", "content": "Hello?"}]})
    assert (request.system, request.question, request.audio) == (None, "Hello?", [])
    assert request.sampling.temperature == 0.7 and request.sampling.max_tokens == 4096  # SamplingConfig's
    # An empty system message is a system turn (the template renders it), unlike no system message.
    assert convert({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]}).system == ""


@pytest.mark.parametrize("mode", ["think", "forced", "off"])
def test_prefill_modes_from_the_final_assistant_message(mode):
    body = {"messages": [{"role": "user", "content": "Q"},
                         {"role": "assistant", "content": assistant_prefills(R1)[mode]}],
            "continue_final_message": True, "add_generation_prompt": False}
    assert convert(body).prefill == mode


def test_prefill_errors():
    user = {"role": "user", "content": "Q"}
    with pytest.raises(APIError, match=r"'<think>Okay,\\n'") as e:  # the field report's variant is not a mode
        convert({"messages": [user, {"role": "assistant", "content": "<think>Okay,\n"}],
                 "continue_final_message": True, "add_generation_prompt": False})
    assert e.value.status == 400 and e.value.param == "messages[1].content"
    with pytest.raises(APIError, match="needs a final assistant message"):
        convert({"messages": [user], "continue_final_message": True, "add_generation_prompt": False})
    with pytest.raises(APIError, match="contradicts"):
        convert({"messages": [user, {"role": "assistant", "content": "<think>\nOkay,"}],
                 "continue_final_message": True, "add_generation_prompt": False,
                 "chat_template_kwargs": {"enable_thinking": False}})
    assert convert({"messages": [user], "chat_template_kwargs": {"enable_thinking": False}}, QWEN).prefill == "off"
    assert convert({"messages": [user]}, QWEN).prefill == "think"


def test_what_the_formats_cannot_render_is_refused():
    with pytest.raises(APIError, match="exactly one user message, got 2"):
        convert({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    with pytest.raises(APIError, match="must come before"):
        convert({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})
    with pytest.raises(APIError, match="takes text only") as e:
        convert({"messages": [{"role": "system", "content": [audio_part()]}, {"role": "user", "content": "a"}]})
    assert e.value.param == "messages[0].content[0]"


def test_wav_base64_is_lossless():
    clip = decode((SAMPLES / "note.m4a").read_bytes())
    assert (decode(base64.b64decode(wav_base64(clip))) == clip).all()


def stream(fmt, mode, pieces, result):
    splitter = StreamSplitter(fmt, mode)
    reasoning, answer = "", ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
        assert "</" not in reasoning + answer and "<|EO" not in answer  # no partial markers ever sent
    r, a = splitter.finish(result)
    return reasoning + r, answer + a


def test_stream_splitter_sends_reasoning_then_answer():
    text = " Okay, the speaker greets   someone warmly.\n</think>\n\nHello and welcome!<|EOT|>"
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    parsed = R1.split_output(text, "think")
    result = GenerationResult("r", text=text, reasoning=parsed.reasoning, answer=parsed.answer)
    assert stream(R1, "think", pieces, result) == (parsed.reasoning, parsed.answer)
    # Cut off while reasoning: all of it is reasoning, no answer.
    cut = text[:20]
    parsed = R1.split_output(cut, "forced")
    result = GenerationResult("r", text=cut, reasoning=parsed.reasoning, answer=None, truncated=True)
    assert stream(R1, "forced", [cut[:7], cut[7:]], result) == (parsed.reasoning, "")
    assert parsed.reasoning.startswith("Okay,")
