"""contract.formats: prompts byte-identical to the official template, output splitting,
audio token counts, and no engine imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract.formats import (
    FAMILIES,
    ModelFormat,
    ParsedOutput,
    get_format,
    render_prompt,
)
from tests.conftest import official_step_audio_r1

R1 = get_format("step_audio_r1")
QWEN = get_format("qwen2_audio")
WHISPER = get_format("whisper")


def chat(system: str | None, question: str, num_audio: int) -> list[dict]:
    user = {
        "role": "user",
        "content": [{"type": "audio"}] * num_audio + [{"type": "text", "text": question}],
    }
    return ([{"role": "system", "content": system}] if system is not None else []) + [user]


SYSTEMS = [None, "You are an expert audio analyst.\nAnswer in English.", ""]
QUESTIONS = ["What is said?", "Transcribe this.\nThen summarise 'it' in \"one\" line {{ x }}.", ""]


@pytest.mark.parametrize("num_audio", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("question", QUESTIONS)
def test_step_audio_r1_prompt_matches_official_template(system, question, num_audio):
    expected = official_step_audio_r1(chat(system, question, num_audio), add_generation_prompt=True)
    got = render_prompt("step_audio_r1", system=system, question=question, num_audio=num_audio)
    assert got == expected
    assert got == R1.render_prompt(system=system, question=question, num_audio=num_audio, prefill="think")


def test_step_audio_r1_prompt_literal():
    got = render_prompt("step_audio_r1", system="S", question="Q", num_audio=2)
    assert got == (
        "<|BOT|>system\nS<|EOT|><|BOT|>human\n<audio_patch><audio_patch>Q<|EOT|>"
        "<|BOT|>assistant\n<think>\n"
    )


@pytest.mark.parametrize(("prefill", "assistant"), [("forced", "<think>\nOkay,"), ("off", "<think>\n\n</think>\n")])
def test_step_audio_r1_prefills(prefill, assistant):
    base = render_prompt("step_audio_r1", system="S", question="Q", num_audio=1)
    got = render_prompt("step_audio_r1", system="S", question="Q", num_audio=1, prefill=prefill)
    # A prefill only appends to the generation prompt ...
    assert got == base + assistant.removeprefix("<think>\n")
    # ... and equals the template rendering a final assistant message (the HTTP path's
    # continue_final_message=True, add_generation_prompt=False).
    messages = chat("S", "Q", 1) + [{"role": "assistant", "content": assistant}]
    assert got == official_step_audio_r1(messages, add_generation_prompt=False)


def test_unknown_prefill():
    with pytest.raises(ValueError, match="forced"):
        render_prompt("step_audio_r1", system=None, question="Q", num_audio=1, prefill="Okay")
    with pytest.raises(ValueError):
        R1.split_output("x", prefill="nope")
    with pytest.raises(ValueError):
        render_prompt("whisper", system=None, question="Q", num_audio=1, prefill="think")


@pytest.mark.parametrize(
    ("text", "prefill", "expected"),
    [
        ("The speaker sounds calm.\n</think>\n\nCalm.", None, ParsedOutput("The speaker sounds calm.", "Calm.", False)),
        ("a</think>b", "think", ParsedOutput("a", "b", False)),
        # Cut off inside the reasoning: keep it, no answer.
        ("I hear a dog and", None, ParsedOutput("I hear a dog and", None, True)),
        ("", None, ParsedOutput("", None, True)),
        # Split on the FIRST </think>; later ones belong to the answer.
        ("r1</think>ans </think> more", None, ParsedOutput("r1", "ans </think> more", False)),
        # skip_special_tokens=False leaves the stop token in the text.
        ("r</think>\nA<|EOT|>", None, ParsedOutput("r", "A", False)),
        ("partial<|EOT|>", None, ParsedOutput("partial", None, True)),
        # Forced: the prefilled word is part of the reasoning.
        (" I hear rain.</think>Rain.", "forced", ParsedOutput("Okay, I hear rain.", "Rain.", False)),
        (" I hear", "forced", ParsedOutput("Okay, I hear", None, True)),
        # Off: the prompt closed the reasoning, everything is the answer.
        ("\nRain.<|EOT|>", "off", ParsedOutput(None, "Rain.", False)),
    ],
)
def test_step_audio_r1_split_output(text, prefill, expected):
    assert R1.split_output(text, prefill=prefill) == expected


def test_qwen2_audio_prompt():
    got = render_prompt("qwen2_audio", system="S", question="Q", num_audio=2)
    assert got == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Q<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt("qwen2_audio", system=None, question="Q", num_audio=1) == (
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nQ<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen2_audio_split_output():
    assert QWEN.split_output(" random words ") == ParsedOutput(None, "random words", False)
    assert QWEN.split_output("r</think>a") == ParsedOutput("r", "a", False)
    assert QWEN.split_output("r</think>a", prefill="off") == ParsedOutput(None, "r</think>a", False)


def test_whisper():
    # Whisper is asked to transcribe, whatever the question: that is what the prompt column records.
    assert render_prompt("whisper", system="ignored", question="Glossary: Ray.", num_audio=1) == "transcribe"
    assert WHISPER.asked("Summarize the call.") == WHISPER.asked(None) == "transcribe"
    assert not WHISPER.answers_questions and QWEN.answers_questions
    assert QWEN.asked("Summarize the call.") == "Summarize the call." and QWEN.asked(None) == ""
    assert WHISPER.split_output(" Hello. ") == ParsedOutput(None, "Hello.", False)
    assert WHISPER.audio_tokens(16000 * 30) == 1500
    assert WHISPER.audio_tokens(16000 * 60) == 1500
    assert WHISPER.audio_tokens(1) == 1
    assert WHISPER.audio_tokens(8000, sample_rate=8000) == 50


def test_audio_tokens():
    assert R1.audio_tokens(16000 * 25) == 315
    assert R1.audio_tokens(16000) == 15  # 12.5 per second + 2
    # The fork pads 479 samples before its STFT, so (num_samples // 160) frames would say 8.
    assert R1.audio_tokens(8000) == 9
    assert R1.audio_tokens(44100 * 25, sample_rate=44100) == 315
    assert QWEN.audio_tokens(16000 * 30) == 750
    assert QWEN.audio_tokens(16000 * 40) == 750  # the extractor cuts at 30 s
    assert QWEN.audio_tokens(16000 * 5) == 125


def test_attributes():
    assert FAMILIES == ("step_audio_r1", "qwen2_audio", "whisper")
    for family in FAMILIES:
        fmt = get_format(family)
        assert isinstance(fmt, ModelFormat) and fmt.family == family
    assert (R1.stop_token_ids, R1.stop, R1.skip_special_tokens, R1.max_item_s) == ([151665], [], False, 25.0)
    assert (QWEN.stop_token_ids, QWEN.stop, QWEN.skip_special_tokens, QWEN.max_item_s) == (
        [], ["<|im_end|>"], True, 30.0)
    assert WHISPER.max_item_s == 30.0
    # Every family's longest item fits the model.
    assert R1.audio_tokens(int(R1.max_item_s * 16000)) == 315


def test_unknown_family():
    with pytest.raises(ValueError, match="step_audio_r1, qwen2_audio, whisper"):
        get_format("gpt-4o")
    with pytest.raises(ValueError, match="unknown model family"):
        render_prompt("nope", system=None, question="Q", num_audio=1)


def test_import_pulls_no_engine():
    code = (
        "import sys, contract.formats\n"
        "bad = [m for m in ('vllm', 'torch', 'ray', 'faster_whisper', 'transformers') if m in sys.modules]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
