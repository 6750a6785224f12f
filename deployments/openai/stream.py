"""Streaming a model's text to an HTTP caller as reasoning and answer pieces."""

from __future__ import annotations

import logging

from contract.formats import ModelFormat
from contract.messages import GenerationResult

logger = logging.getLogger("ray.serve")


class StreamSplitter:
    """Turns the text a model streams into reasoning and answer pieces, as a reasoning parser does.

    Each time, the whole text so far goes through the format's `split_output`; what is new since the last
    piece is sent. The tail of an unfinished part is held back (HOLD characters) so a partly streamed marker
    (`</thi`, `<|EO`) is never sent as text. `finish` sends the rest from the engine's final result.
    """

    HOLD = 16

    def __init__(self, fmt: ModelFormat, mode: str):
        self.fmt, self.mode = fmt, mode
        self.text = ""
        self.reasoning = ""  # sent so far
        self.answer = ""
        self._warned = False

    def feed(self, text: str) -> tuple[str, str]:
        self.text += text
        parsed = self.fmt.split_output(self.text, self.mode)
        if parsed.answer is None:  # still reasoning
            return self._send((parsed.reasoning or "")[:-self.HOLD], "")
        return self._send(parsed.reasoning or "", parsed.answer[:-self.HOLD])

    def finish(self, result: GenerationResult) -> tuple[str, str]:
        return self._send(result.reasoning or "", result.answer or "")

    def _send(self, reasoning: str, answer: str) -> tuple[str, str]:
        # Only ever extend what was sent: a piece cannot be taken back.
        new_reasoning = reasoning[len(self.reasoning):] if reasoning.startswith(self.reasoning) else ""
        new_answer = answer[len(self.answer):] if answer.startswith(self.answer) else ""
        if not self._warned and not (reasoning.startswith(self.reasoning) and answer.startswith(self.answer)):
            self._warned = True
            logger.warning("streamed text was reclassified between reasoning and answer; the stream keeps "
                           "what it sent")
        self.reasoning += new_reasoning
        self.answer += new_answer
        return new_reasoning, new_answer
