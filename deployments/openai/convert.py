"""Chat messages <-> the pipeline's GenerationRequest, and the conventions both ends of HTTP share.

What a request may hold (the formats render one system text, one user turn of audio items then text, and the
assistant turn's opening):

- system (or developer) messages: their text, joined by newlines, is the system prompt;
- exactly one user message: its text parts, joined by newlines, are the question; each `input_audio` or
  `audio_url` part is decoded to 16 kHz mono and is one audio item, or several when it is longer than the
  model's item length (cut at quiet points, as the pipeline cuts a file). The format
  puts the audio before the question, as the reference client does, whatever the order of the parts;
- optionally a final assistant message with `continue_final_message: true`: the prefill. Its text must be one
  the model's format knows (`assistant_prefills`): for Step-Audio-R1 `"<think>\\n"` (think, the default),
  `"<think>\\nOkay,"` (forced), `"<think>\\n\\n</think>\\n"` (off). These are exactly the texts that make vLLM's
  chat template render the format's prompt, so the `openai` engine sends the same request to vLLM's server
  and to this app. `chat_template_kwargs: {"enable_thinking": false}` also selects "off".

Conversation history (an assistant turn before the user's) is refused with a 400 that says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

import numpy as np

from contract.answers import answer_schema
from contract.audio import DecodeError, decode
from contract.config import HTTPConfig, SamplingConfig
from contract.formats import ModelFormat, assistant_prefills
from contract.messages import GenerationRequest
from contract.segment import segment
from deployments.openai.protocol import APIError, ChatCompletionRequest, ChatMessage

logger = logging.getLogger("ray.serve")


def prefill_mode(fmt: ModelFormat, assistant: str | None, enable_thinking: Any, param: str | None) -> str:
    """The prefill mode a request asks for: from the continued assistant text, then `enable_thinking`."""
    texts = assistant_prefills(fmt)
    modes = list(texts) if assistant is None else [m for m, t in texts.items() if t == assistant]
    if not modes:
        known = ", ".join(f"{t!r} ({m})" for m, t in texts.items())
        raise APIError(400, f"this model continues only these assistant prefills: {known}; got {assistant!r}",
                       code="unsupported_prefill", param=param)
    if enable_thinking is False:
        if "off" not in modes:
            raise APIError(400, "enable_thinking false contradicts the assistant prefill"
                           if assistant is not None else f"{fmt.family} cannot turn thinking off",
                           code="unsupported_prefill", param="chat_template_kwargs.enable_thinking")
        return "off"
    return modes[0]


def _text(message: ChatMessage, where: str) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for i, part in enumerate(message.content):
        if part.type != "text":
            raise APIError(400, f"a {message.role} message takes text only, not {part.type}",
                           code="unsupported_content", param=f"{where}.content[{i}]")
        parts.append(part.text)
    return "\n".join(parts)


async def to_generation_request(body: ChatCompletionRequest, fmt: ModelFormat, http: HTTPConfig,
                                 request_id: str) -> GenerationRequest:
    """The request the engine answers, or APIError (400) saying what the messages hold that it cannot take."""
    messages = list(enumerate(body.messages))
    prefill_text, prefill_param = None, None
    if body.continue_final_message:
        index, last = messages[-1]
        if last.role != "assistant":
            raise APIError(400, "continue_final_message needs a final assistant message to continue",
                           code="invalid_prefill", param=f"messages[{index}]")
        prefill_param = f"messages[{index}].content"
        prefill_text = _text(last, f"messages[{index}]")
        messages = messages[:-1]

    system, user = [], []
    for index, message in messages:
        where = f"messages[{index}]"
        if message.role in ("system", "developer"):
            if user:
                raise APIError(400, "system messages must come before the user message",
                               code="unsupported_conversation", param=where)
            system.append(_text(message, where))
        elif message.role == "user":
            user.append((index, message))
        else:
            raise APIError(400, "conversation history is not supported: send system messages, one user message and "
                           "optionally a final assistant prefill with continue_final_message",
                           code="unsupported_conversation", param=where)
    if len(user) != 1:
        raise APIError(400, f"expected exactly one user message, got {len(user)}",
                       code="unsupported_conversation", param="messages")

    index, message = user[0]
    questions, audio, cut = [], [], False
    parts = [message.content] if isinstance(message.content, str) else message.content or []
    for i, part in enumerate(parts):
        where = f"messages[{index}].content[{i}]"
        if isinstance(part, str):
            questions.append(part)
        elif part.type == "text":
            questions.append(part.text)
        else:
            data = await _audio_bytes(part, where, http)
            items = await asyncio.to_thread(_decode_items, data, fmt.max_item_s, where)
            cut = cut or len(items) > 1
            audio.extend(items)

    enable_thinking = (body.chat_template_kwargs or {}).get("enable_thinking")
    mode = prefill_mode(fmt, prefill_text, enable_thinking, prefill_param)
    defaults = SamplingConfig()
    max_tokens = body.max_completion_tokens or body.max_tokens
    sampling = SamplingConfig(
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        repetition_penalty=defaults.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty,
        max_tokens=max_tokens or defaults.max_tokens,
        seed=body.seed,
    )
    # An audio part cut here is one recording in several items (an engine that takes long audio joins them).
    return GenerationRequest(request_id=request_id, audio=audio, question="\n".join(questions),
                             system="\n".join(system) if system else None, prefill=mode, sampling=sampling,
                             recording=cut, answer_schema=_answer_schema(body))


def _answer_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema of `response_format`, or APIError (400) if it is not a valid JSON Schema."""
    schema = body.response_format.answer_schema() if body.response_format else None
    if schema is None:
        return None
    try:
        return answer_schema(schema)
    except ValueError as e:
        raise APIError(400, f"response_format: {e}", code="invalid_schema",
                       param="response_format.json_schema.schema") from None


async def _audio_bytes(part: Any, where: str, http: HTTPConfig) -> bytes:
    if part.type == "input_audio":
        data = part.input_audio.data
        if data.startswith("data:"):  # lenient: some clients send a data: URI here
            return _data_uri(data, f"{where}.input_audio.data")
        return _b64(data, f"{where}.input_audio.data")
    url = part.audio_url.url
    if url.startswith("data:"):
        return _data_uri(url, f"{where}.audio_url.url")
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    if protocol not in http.audio_url_protocols:
        allowed = ", ".join(http.audio_url_protocols) or "none"
        raise APIError(400, f"audio_url {protocol or url!r} is not enabled on this server (data: URIs and "
                       f"deployment.http.audio_url_protocols: {allowed}); send the audio inline",
                       code="unsupported_audio_url", param=f"{where}.audio_url.url")
    return await asyncio.to_thread(_read_url, url, http.max_body_bytes, f"{where}.audio_url.url")


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "audio data is not valid base64", code="invalid_audio", param=param) from None


def _data_uri(uri: str, param: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise APIError(400, "audio data: URI must be base64 (data:audio/wav;base64,...)",
                       code="invalid_audio", param=param)
    return _b64(payload, param)


def _read_url(url: str, limit: int, param: str) -> bytes:
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            data = f.read(limit + 1)
    except Exception as e:  # missing object, no permission, unknown protocol: the caller's URL
        raise APIError(400, f"cannot read audio_url: {type(e).__name__}: {e}", code="unreadable_audio_url",
                       param=param) from None
    if len(data) > limit:
        raise APIError(400, f"audio_url object is over {limit} bytes", code="audio_too_large", param=param)
    return data


def _decode_items(data: bytes, max_item_s: float, param: str) -> list[np.ndarray]:
    """The audio part as items the model takes: a part longer than the item length is cut at quiet points, as
    the batch pipeline cuts a file (and StepFun's client cuts on its side); the request body's size limit bounds
    how long it can be. Whether the items fit the context is the engine's check (a 400 naming the budget)."""
    try:
        audio = decode(data)
    except DecodeError as e:
        raise APIError(400, f"cannot decode the audio: {e}", code="invalid_audio", param=param) from None
    except Exception as e:  # a decoder tripping over hostile bytes: still the caller's audio, not our fault
        logger.warning("decoder failed on %s: %s: %s", param, type(e).__name__, e)
        raise APIError(400, f"cannot decode the audio: {type(e).__name__}: {e}", code="invalid_audio",
                       param=param) from None
    return [audio[start:end] for start, end in segment(audio, max_s=max_item_s)]
