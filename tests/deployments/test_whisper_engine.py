"""The embedded whisper engine itself, in this process (no Ray): the real faster-whisper tiny.en model on real
speech, and on silence and near-silence made here, with its voice-activity filter on (the default) and off."""

import asyncio

import numpy as np
import pytest

from contract.audio import SAMPLE_RATE, decode
from contract.config import EngineConfig
from contract.messages import GenerationRequest
from deployments.engines.whisper import NO_SPEECH, WhisperEngine
from tests.conftest import SAMPLES, word_error_rate

SECONDS = 10


def quiet(kind: str) -> np.ndarray:
    """10 s without speech: digital silence, faint white noise (-60 dBFS) or a faint 50 Hz mains hum (-45 dBFS)."""
    n = SECONDS * SAMPLE_RATE
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "noise":
        return (np.random.default_rng(0).standard_normal(n) * 10 ** (-60 / 20)).astype(np.float32)
    return (np.sin(2 * np.pi * 50 * np.arange(n) / SAMPLE_RATE) * 10 ** (-45 / 20)).astype(np.float32)


@pytest.fixture(scope="module")
def engines():
    """The default engine (filter on) and one with `engine_kwargs.vad_filter: false`."""
    return {True: WhisperEngine(EngineConfig()),
            False: WhisperEngine(EngineConfig(engine_kwargs={"vad_filter": False}))}


def transcribe(engine: WhisperEngine, audio: list[np.ndarray], recording: bool):
    return asyncio.run(engine.generate(GenerationRequest("r", audio, "Summarize the call.", recording=recording)))


@pytest.mark.parametrize("kind", ["silence", "noise", "hum"])
@pytest.mark.parametrize("recording", [False, True], ids=["item", "recording"])
def test_no_speech_is_an_empty_answer_marked_no_speech(engines, kind, recording):
    result = transcribe(engines[True], [quiet(kind)], recording)
    assert (result.answer, result.finish_reason, result.error_class) == ("", NO_SPEECH, None)
    assert result.completion_tokens == 0 and (result.segments == [] if recording else result.segments is None)


def test_without_the_filter_whisper_invents_words_in_silence(engines):
    """What the filter is for: the same silence, filter off, is 'transcribed' (tiny.en says "you")."""
    invented = [transcribe(engines[False], [quiet("silence")], recording=False),
                transcribe(engines[False], [quiet("hum")], recording=True),
                transcribe(engines[False], [quiet("noise")], recording=True)]
    assert all(r.answer and r.finish_reason == "stop" for r in invented), [r.answer for r in invented]


def test_speech_is_transcribed_with_the_filter_on_and_its_silence_skipped(engines, transcripts):
    greeting = decode((SAMPLES / "greeting.wav").read_bytes())
    alone = transcribe(engines[True], [greeting], recording=False)
    assert alone.finish_reason == "stop" and word_error_rate(transcripts["greeting.wav"], alone.answer) <= 0.1
    # A recording with 10 s of silence before its speech: the words and their times are the speech's.
    padded = transcribe(engines[True], [quiet("silence"), greeting], recording=True)
    assert word_error_rate(transcripts["greeting.wav"], padded.answer) <= 0.1
    assert padded.segments[0][0] >= SECONDS - 1, padded.segments
