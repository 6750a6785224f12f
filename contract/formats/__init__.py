"""Model-specific knowledge, one module per model family.

Everything the pipeline must know about a model but no engine can tell it: the exact prompt
text, how many prompt tokens an audio item costs, the longest item the model accepts, stop
tokens, and how to split generated text into reasoning and answer.

This package imports no engine (vllm, torch, faster_whisper) and no Ray, so drivers, planners
and tests can use it without the heavy dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedOutput:
    reasoning: str | None
    answer: str | None
    truncated: bool  # the model was cut off before its answer began


@dataclass(frozen=True)
class ModelFormat:
    """Base class; each family module defines a subclass and one instance, ``FORMAT``.

    ``prefill`` arguments name a mode from ``prefills``; ``None`` means the first (default)
    one. The list fields are shared by every caller: treat them as read-only.
    """

    family: str
    max_item_s: float  # longest single audio item the model accepts
    max_items_per_request: int | None  # None: bounded only by the context length
    stop_token_ids: list[int]
    stop: list[str]  # stop strings, for models whose stop token id varies by checkpoint
    skip_special_tokens: bool
    prefills: tuple[str, ...]  # accepted prefill modes; the first is the default
    # What the chat template puts after the assistant header when it opens the assistant turn itself
    # (add_generation_prompt), e.g. an opened reasoning block; the OpenAI routes need it to map a continued
    # assistant message back to a prefill mode.
    generation_prompt_tail: str = ""
    # What the model is asked whatever the task's question, for a model that does one thing (whisper transcribes);
    # None: the model answers the question.
    fixed_prompt: str | None = None

    @property
    def answers_questions(self) -> bool:
        return self.fixed_prompt is None

    def asked(self, question: str | None) -> str:
        """What the model is really asked for a task's question: the `prompt` column, part of an answer's identity
        (pipeline.answered), so a changed question is asked again only of a model that hears it."""
        return (question or "") if self.fixed_prompt is None else self.fixed_prompt

    def render_prompt(
        self, *, system: str | None, question: str, num_audio: int, prefill: str | None = None
    ) -> str:
        raise NotImplementedError

    def audio_tokens(self, num_samples: int, sample_rate: int = 16000) -> int:
        raise NotImplementedError

    def split_output(self, text: str, prefill: str | None = None) -> ParsedOutput:
        raise NotImplementedError

    def check_prefill(self, prefill: str | None) -> str:
        """Return the prefill mode to use, or raise ValueError for one this family lacks."""
        if prefill is None:
            return self.prefills[0]
        if prefill not in self.prefills:
            raise ValueError(
                f"unknown prefill {prefill!r} for {self.family}; known: {', '.join(self.prefills)}"
            )
        return prefill


THINK_END = "</think>"


def split_reasoning(text: str, head: str = "") -> ParsedOutput:
    """Split a reasoning model's continuation on the FIRST literal ``</think>``.

    ``</think>`` is several ordinary tokens, not a special token, so it is matched as text.
    ``head`` is prompt text that belongs to the reasoning (a prefilled "Okay,"). No
    ``</think>`` means generation stopped inside the reasoning: keep it, answer None.
    """
    reasoning, sep, answer = (head + text).partition(THINK_END)
    if not sep:
        return ParsedOutput(reasoning=reasoning.strip(), answer=None, truncated=True)
    return ParsedOutput(reasoning=reasoning.strip(), answer=answer.strip(), truncated=False)


def assistant_prefills(fmt: ModelFormat) -> dict[str, str]:
    """For each of the format's prefill modes, the assistant message text that, continued
    (`continue_final_message`), renders the prompt the format renders for that mode.

    A mode only appends to the default mode's prompt (tests/contract/test_formats.py checks this against the
    official template), so the text is the template's own opening plus what the mode appends. Modes that append
    nothing share a text; `enable_thinking: false` tells "off" apart then.
    """
    def prompt(mode: str) -> str:
        return fmt.render_prompt(system=None, question="", num_audio=0, prefill=mode)

    base = prompt(fmt.prefills[0])
    head = fmt.generation_prompt_tail
    texts = {}
    for mode in fmt.prefills:
        rendered = prompt(mode)
        if not rendered.startswith(base):
            raise ValueError(f"{fmt.family} prefill {mode!r} does not extend the default prompt")
        texts[mode] = head + rendered[len(base):]
    return texts


# Imported late: the family modules subclass ModelFormat and use split_reasoning from above.
from . import qwen2_audio, step_audio_r1, whisper  # noqa: E402

_FORMATS: dict[str, ModelFormat] = {
    m.FORMAT.family: m.FORMAT for m in (step_audio_r1, qwen2_audio, whisper)
}
FAMILIES: tuple[str, ...] = tuple(_FORMATS)


def get_format(family: str) -> ModelFormat:
    try:
        return _FORMATS[family]
    except KeyError:
        raise ValueError(
            f"unknown model family {family!r}; known: {', '.join(FAMILIES)}"
        ) from None


def render_prompt(
    family: str,
    *,
    system: str | None,
    question: str,
    num_audio: int,
    prefill: str | None = None,
) -> str:
    return get_format(family).render_prompt(
        system=system, question=question, num_audio=num_audio, prefill=prefill
    )


__all__ = [
    "FAMILIES",
    "ModelFormat",
    "ParsedOutput",
    "get_format",
    "render_prompt",
    "split_reasoning",
]
