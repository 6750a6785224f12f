"""Step-Audio-R1 (StepFun's vLLM fork, architecture StepAudio2ForCausalLM).

The prompt is what the official chat template (the README's ``--chat-template``) renders for
``[system?, user(audio parts..., text part)]`` with ``add_generation_prompt=True``; the tests
render the template itself and compare bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ModelFormat, ParsedOutput, split_reasoning

BOT, EOT = "<|BOT|>", "<|EOT|>"
AUDIO = "<audio_patch>"  # one per item; vLLM expands it to the item's patch tokens

# The template's generation prompt already opens the reasoning block.
THINK = "<think>\n"
# Forced reasoning: the field report prefilled "Okay," (the model's habitual first word) because
# a bare "<think>" sometimes gets closed at once. We keep the template's "<think>\n" and append
# "Okay," (the report wrote "<think>Okay,\n"): the prompt stays the trained generation prompt
# plus one word, and no newline is forced into the middle of the model's first sentence.
FORCED = "Okay,"
# Thinking off: an empty reasoning block, the shape non-reasoning samples were trained in.
OFF = "\n</think>\n"

_PROMPT_TAIL = {"think": "", "forced": FORCED, "off": OFF}


@dataclass(frozen=True)
class StepAudioR1Format(ModelFormat):
    def render_prompt(
        self, *, system: str | None, question: str, num_audio: int, prefill: str | None = None
    ) -> str:
        tail = _PROMPT_TAIL[self.check_prefill(prefill)]
        # The template renders a system turn whenever messages[0] is one, even if empty:
        # only None leaves it out.
        head = "" if system is None else f"{BOT}system\n{system}{EOT}"
        # Content parts render in order; the reference client puts the audio first.
        user = f"{BOT}human\n{AUDIO * num_audio}{question}{EOT}"
        return f"{head}{user}{BOT}assistant\n{THINK}{tail}"

    def audio_tokens(self, num_samples: int, sample_rate: int = 16000) -> int:
        # As the fork computes it (mm_step_audio.py, Step1fProcessor): resample to 16 kHz, pad
        # 479 samples, STFT hop 160 (last frame dropped), then encoder /4, adapter conv k3 s2 p1.
        n = int(num_samples * 16000 / sample_rate)
        frames = (n + 479) // 160
        patches = (((frames + 1) // 2 // 2) + 2 - 3) // 2 + 1
        return patches + 2  # <audio_start> ... <audio_end>

    def split_output(self, text: str, prefill: str | None = None) -> ParsedOutput:
        mode = self.check_prefill(prefill)
        # skip_special_tokens=False keeps the stop token <|EOT|> in the text.
        text = text.removesuffix(EOT)
        if mode == "off":
            # The prompt closed the reasoning block: everything generated is the answer.
            return ParsedOutput(reasoning=None, answer=text.strip(), truncated=False)
        # Prefilled words were written "by the model" in the prompt: give them back.
        return split_reasoning(text, head=FORCED if mode == "forced" else "")


FORMAT = StepAudioR1Format(
    family="step_audio_r1",
    # The encoder has 1500 positions (29.98 s); the reference client cuts at 25 s.
    max_item_s=25.0,
    max_items_per_request=None,
    stop_token_ids=[151665],  # <|EOT|>
    stop=[],
    skip_special_tokens=False,
    prefills=("think", "forced", "off"),
    generation_prompt_tail=THINK,
)
