"""Qwen2-Audio, as the tiny random-weight test model that upstream vLLM runs on CPU.

It stands in for Step-Audio-R1 in tests of the engine path, so it only has to be faithful to
what vLLM expects (prompt placeholders, token counts, stops), not to produce sensible text.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ModelFormat, ParsedOutput, split_reasoning

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"  # vLLM expands <|AUDIO|> per item


@dataclass(frozen=True)
class Qwen2AudioFormat(ModelFormat):
    def render_prompt(
        self, *, system: str | None, question: str, num_audio: int, prefill: str | None = None
    ) -> str:
        self.check_prefill(prefill)  # no reasoning format: modes only change split_output
        head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
        # The chat format of vLLM's Qwen2-Audio example: "Audio i: " before each item.
        audio = "".join(f"Audio {i}: {AUDIO}\n" for i in range(1, num_audio + 1))
        return f"{head}<|im_start|>user\n{audio}{question}<|im_end|>\n<|im_start|>assistant\n"

    def audio_tokens(self, num_samples: int, sample_rate: int = 16000) -> int:
        # As vLLM 0.32 computes it (qwen2_audio.py, _get_feat_extract_output_lengths over the
        # HF processor's feature attention mask): mel frames (hop 160; the extractor pads and
        # truncates to 30 s = 3000), conv stride 2, pool 2. Only <|AUDIO|> is expanded: the
        # bos/eos markers are prompt text. 0 (items under ~10 ms) is rejected by vLLM as too short.
        n = int(num_samples * 16000 / sample_rate)
        frames = min(-(-n // 160), 3000)  # the mask is the padded samples taken every 160th
        encoded = (frames - 1) // 2 + 1
        return (encoded - 2) // 2 + 1

    def split_output(self, text: str, prefill: str | None = None) -> ParsedOutput:
        # A "</think>" lets tests drive the reasoning plumbing through this model; a random
        # model rarely writes one, so its absence means "no reasoning", not "truncated".
        if self.check_prefill(prefill) == "think" and "</think>" in text:
            return split_reasoning(text)
        return ParsedOutput(reasoning=None, answer=text.strip(), truncated=False)


FORMAT = Qwen2AudioFormat(
    family="qwen2_audio",
    max_item_s=30.0,  # the feature extractor cuts at 30 s
    max_items_per_request=None,
    stop_token_ids=[],  # <|im_end|>'s id depends on the (test-built) tokenizer
    stop=["<|im_end|>"],
    skip_special_tokens=True,
    prefills=("think", "off"),
)
