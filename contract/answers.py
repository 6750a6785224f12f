"""A task's answer shape: a JSON Schema (or a list of labels) that every answer must hold to.

The engines constrain the answer to the schema where they can (vLLM's structured outputs, an OpenAI-compatible
server's `response_format`); `check_answer` then holds every answer to it whatever the engine did, so a row either
carries JSON that validates or is an `AnswerInvalid` error row. Pure: jsonschema only, no engine, no Ray.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

# Values tallied per labelled field in the report; a field with more distinct values is not a label.
MAX_LABELS = 50


class AnswerInvalid(Exception):
    """The model's answer is not JSON that validates against the task's schema (retrying may give one that is)."""


def answer_schema(spec: dict[str, Any] | list[str]) -> dict[str, Any]:
    """The JSON Schema a task's `answer` stands for: a list of labels is one string of those; a dict is itself.
    ValueError (naming the problem) if the schema is not a valid JSON Schema."""
    if isinstance(spec, list):
        if not spec or not all(isinstance(label, str) and label for label in spec):
            raise ValueError("a list of labels must hold at least one non-empty string")
        schema: dict[str, Any] = {"type": "string", "enum": list(dict.fromkeys(spec))}
    else:
        schema = spec
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {e.message}") from None
    return schema


def check_answer(schema: dict[str, Any], answer: str) -> Any:
    """The answer parsed as JSON, or AnswerInvalid saying why it does not hold to `schema`. Raw control
    characters inside strings are taken (engines' JSON grammars let them through); `canonical` escapes them."""
    try:
        value = json.loads(answer, strict=False)
    except json.JSONDecodeError as e:
        raise AnswerInvalid(f"answer is not JSON ({e.msg} at character {e.pos}): {answer[:80]!r}") from None
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the answer"
        raise AnswerInvalid(f"{where}: {error.message[:200]}")
    return value


def canonical(value: Any) -> str:
    """A valid answer as the output stores it: compact JSON that every reader parses (control characters
    escaped, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def labelled_fields(schema: dict[str, Any]) -> list[str]:
    """The parts of an answer that take one of a few values, for tallies: "" for an answer that is itself a
    label (an enum or a boolean), else the names of such top-level properties of an object answer."""
    def is_label(s: Any) -> bool:
        return isinstance(s, dict) and ("enum" in s or s.get("type") == "boolean")

    if is_label(schema):
        return [""]
    return [name for name, sub in (schema.get("properties") or {}).items() if is_label(sub)]
