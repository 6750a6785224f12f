"""Whisper, run by the embedded faster-whisper engine.

Whisper takes no chat prompt and answers no question: whatever a task asks, it is asked to transcribe
(`fixed_prompt`), and the output is a transcript with no reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ModelFormat, ParsedOutput


@dataclass(frozen=True)
class WhisperFormat(ModelFormat):
    def render_prompt(
        self, *, system: str | None, question: str, num_audio: int, prefill: str | None = None
    ) -> str:
        self.check_prefill(prefill)
        return self.asked(question)

    def audio_tokens(self, num_samples: int, sample_rate: int = 16000) -> int:
        # The encoder emits 1500 positions per 30 s window: 50 per second, rounded up.
        n = int(num_samples * 16000 / sample_rate)
        return min(-(-n * 50 // 16000), 1500)

    def split_output(self, text: str, prefill: str | None = None) -> ParsedOutput:
        self.check_prefill(prefill)
        return ParsedOutput(reasoning=None, answer=text.strip(), truncated=False)


FORMAT = WhisperFormat(
    family="whisper",
    max_item_s=30.0,  # one encoder window
    max_items_per_request=None,  # an item alone, or a recording's items joined for long-form transcription
    stop_token_ids=[],
    stop=[],
    skip_special_tokens=True,
    prefills=("off",),  # no reasoning
    fixed_prompt="transcribe",
)
