"""The wire format of `/v1/chat/completions`: what the openai Python client and vLLM's server send and expect.

Unknown top-level fields are accepted and ignored, as vLLM's server does, so clients that send extras (`user`,
`stop`, `stop_token_ids`, `skip_special_tokens`: the model format fixes stops and special tokens) keep working.
Fields that are present but invalid are errors (422) that name the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from contract.messages import GenerationResult


class APIError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 422: "invalid_request_error", 503: "service_unavailable",
             504: "timeout"}

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class InputAudio(_Open):
    data: str = Field(description="Base64 of an audio file (wav, flac, mp3, ogg, m4a, ...), not a data: URI.")
    format: str | None = Field(None, description="The file's format; informative: the bytes are sniffed.")


class InputAudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(_Open):
    url: str = Field(description="A data: URI (`data:audio/wav;base64,...`) or an enabled object-store URI.")


class AudioURLPart(_Open):
    type: Literal["audio_url"]
    audio_url: AudioURL


ContentPart = Annotated[TextPart | InputAudioPart | AudioURLPart, Field(discriminator="type")]
_PART_TAGS = ("text", "input_audio", "audio_url")


def _content_kind(value: Any) -> str:
    return "none" if value is None else "str" if isinstance(value, str) else "list"


# Tagged by the value's kind, so an invalid part is reported once (not also as "not a string").
Content = Annotated[
    Annotated[None, Tag("none")] | Annotated[str, Tag("str")] | Annotated[list[ContentPart], Tag("list")],
    Discriminator(_content_kind),
]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content = None


class StreamOptions(_Open):
    include_usage: bool | None = False


class JSONSchemaFormat(_Open):
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema.schema")
        return self

    def answer_schema(self) -> dict[str, Any] | None:
        """What the answer must hold to: the given schema, any JSON object, or nothing (free text)."""
        if self.type == "json_schema":
            return self.json_schema.schema_
        return {"type": "object"} if self.type == "json_object" else None


class ChatCompletionRequest(_Open):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    n: int | None = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_way_to_end(cls, data: Any) -> Any:
        # As vLLM: continuing the final message and opening a new one exclude each other.
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return data


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request body, or APIError: 400 if it is not JSON, 422 naming the field if a field is invalid."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise APIError(400, f"request body is not valid JSON: {errors[0]['msg']}", code="invalid_json") from None
        messages, params = [], []
        for error in errors:
            param = _param(error["loc"])
            line = f"{param}: {error['msg']}" if param else error["msg"]
            if line not in messages:
                messages.append(line)
                params.append(param)
        more = f" (and {len(messages) - 3} more)" if len(messages) > 3 else ""
        raise APIError(422, "; ".join(messages[:3]) + more, code="invalid_field", param=params[0] or None) from None


def _param(loc: tuple[Any, ...]) -> str:
    """`("messages", 0, "content", "list", 1, "input_audio", "input_audio", "data")` ->
    `messages[0].content[1].input_audio.data`: pydantic puts the union tags in the path; they are not fields."""
    out, previous = "", None
    for part in loc:
        if previous == "content" and part in ("none", "str", "list"):
            continue  # which kind of content
        if isinstance(previous, int) and part in _PART_TAGS and out.endswith("]") and ".content[" in out:
            previous = None  # the part's tag; the field of the same name may follow
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result: GenerationResult) -> dict[str, int]:
    prompt, completion = result.prompt_tokens or 0, result.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def reasoning_fields(reasoning: str | None) -> dict[str, str | None]:
    """vLLM's reasoning parsers answered `reasoning_content` up to 0.10 and `reasoning` since: send both."""
    return {"reasoning_content": reasoning, "reasoning": reasoning}


def completion(completion_id: str, created: int, model: str, result: GenerationResult) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.answer, **reasoning_fields(result.reasoning)},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }],
        "usage": usage(result),
    }


def chunk(completion_id: str, created: int, model: str, delta: dict[str, Any], *,
          finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(completion_id: str, created: int, model: str, result: GenerationResult) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(result)}


def model_card(model: str, max_item_s: float, family: str, max_model_len: int | None = None,
               max_audio_items: int | None = None) -> dict[str, Any]:
    """The model as /v1/models lists it; `max_model_len` (as vLLM's server names it) and `max_audio_items` are
    the request budget, which an `openai` engine calling this app packs recordings by."""
    card = {"id": model, "object": "model", "created": int(time.time()), "owned_by": "audio-reasoning",
            "root": model, "family": family, "max_audio_item_s": max_item_s}
    budget = {"max_model_len": max_model_len, "max_audio_items": max_audio_items}
    return {**card, **{k: v for k, v in budget.items() if v is not None}}
