"""The pipeline's metrics, through Ray's metrics API, so they reach Prometheus on Ray's metrics endpoint.

Recorded by the inference actors from the rows each batch produced (so they count what was written, not
what was planned). Ray prefixes every name with `ray_` and counters get `_total`, so `audio_pipeline_requests`
is scraped as `ray_audio_pipeline_requests_total`. Ray adds its own labels (`WorkerId`, `NodeAddress`,
`SessionName`, ...); ours are below, all of small cardinality (no run id, item id or URI).

- `ray_audio_pipeline_audio_seconds_total` (counter; model): audio seconds of the segments answered, once
  per segment whatever the number of tasks.
- `ray_audio_pipeline_requests_total` (counter; model, task, finish_reason): requests the model answered or
  failed; finish_reason is `stop`, `length` or `error`.
- `ray_audio_pipeline_prompt_tokens_total`, `ray_audio_pipeline_completion_tokens_total` (counters; model,
  task): tokens as the engine counted them (audio tokens are prompt tokens).
- `ray_audio_pipeline_reasoning_chars_total` (counter; model, task): characters of reasoning, exact.
- `ray_audio_pipeline_reasoning_tokens_estimated_total` (counter; model, task): reasoning tokens, estimated
  (`reasoning_tokens`): engines report only the completion's total.
- `ray_audio_pipeline_errors_total` (counter; model, stage, error_class): error rows; stage is `read`,
  `decode` or `infer`.
- `ray_audio_pipeline_request_latency_seconds` (histogram; model, task): time in the engine per request (the
  `latency_s` column).
- `ray_audio_pipeline_call_latency_seconds` (histogram; model): one request's call to the Serve app, waits
  in Serve's router and retries included.
- `ray_audio_pipeline_requests_in_flight` (gauge; model): requests an inference actor has sent to the Serve
  app and not had answered yet.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from contract.messages import LATENCY_BOUNDARIES


def reasoning_tokens(completion_tokens: int | None, reasoning: str | None, answer: str | None) -> float:
    """Reasoning tokens of one answer, estimated: engines report only the completion's total, so it is split
    in proportion to the characters of reasoning and answer (all of it when the answer never came)."""
    if not completion_tokens or not reasoning:
        return 0.0
    if not answer:
        return float(completion_tokens)
    return completion_tokens * len(reasoning) / (len(reasoning) + len(answer))


class PipelineMetrics:
    """The metrics of one inference actor; create it inside the actor (Ray registers metrics per process)."""

    def __init__(self, model: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.model = model
        tasks = ("model", "task")
        self.audio_seconds = Counter("audio_pipeline_audio_seconds", tag_keys=("model",),
                                     description="Audio seconds of the segments answered, once per segment.")
        self.requests = Counter("audio_pipeline_requests", tag_keys=(*tasks, "finish_reason"),
                                description="Requests the model answered or failed, by finish reason.")
        self.prompt_tokens = Counter("audio_pipeline_prompt_tokens", tag_keys=tasks,
                                     description="Prompt tokens (audio included) as counted by the engine.")
        self.completion_tokens = Counter("audio_pipeline_completion_tokens", tag_keys=tasks,
                                         description="Generated tokens, reasoning and answer.")
        self.reasoning_chars = Counter("audio_pipeline_reasoning_chars", tag_keys=tasks,
                                       description="Characters of reasoning.")
        self.reasoning_tokens = Counter(
            "audio_pipeline_reasoning_tokens_estimated", tag_keys=tasks,
            description="Reasoning tokens, estimated: completion tokens split by the characters of reasoning "
            "and answer.")
        self.errors = Counter("audio_pipeline_errors", tag_keys=("model", "stage", "error_class"),
                              description="Error rows by stage and error class.")
        self.request_latency = Histogram("audio_pipeline_request_latency_seconds", boundaries=LATENCY_BOUNDARIES,
                                         tag_keys=tasks, description="Time in the engine per request.")
        self.call_latency = Histogram(
            "audio_pipeline_call_latency_seconds", boundaries=LATENCY_BOUNDARIES, tag_keys=("model",),
            description="One request's call to the Serve app, router waits and retries included.")
        self.in_flight = Gauge("audio_pipeline_requests_in_flight", tag_keys=("model",),
                               description="Requests sent to the Serve app and not answered yet (this actor).")
        self._in_flight = 0

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Around one request's call to the Serve app: in flight while it lasts, and its latency."""
        tags = {"model": self.model}
        self._in_flight += 1
        self.in_flight.set(self._in_flight, tags=tags)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.in_flight.set(self._in_flight, tags=tags)
            self.call_latency.observe(time.perf_counter() - start, tags=tags)

    def record(self, rows: pa.Table) -> None:
        """Everything countable in one batch's output rows (OUTPUT_SCHEMA)."""
        audio = {}  # (item_id, start_s) -> duration: once per item or window, whatever the number of tasks
        requests, tokens, errors = Tally(), Tally(), Tally()
        for row in rows.to_pylist():
            combined = row["part"] is None and row["part_count"] is not None  # its parts counted the audio
            if row["duration_s"] is not None and not combined:
                key = (row["item_id"], row["start_s"])
                audio[key] = max(audio.get(key, 0.0), row["duration_s"])
            if row["error_class"] is not None:
                errors[(row["error_stage"] or "unknown", row["error_class"])] += 1
            if row["finish_reason"] is None:  # never reached the model (read or decode error)
                continue
            task = row["task"]
            requests[(task, row["finish_reason"])] += 1
            tokens[("prompt", task)] += row["prompt_tokens"] or 0
            tokens[("completion", task)] += row["completion_tokens"] or 0
            tokens[("reasoning_chars", task)] += len(row["reasoning"] or "")
            tokens[("reasoning", task)] += reasoning_tokens(row["completion_tokens"], row["reasoning"], row["answer"])
            if row["latency_s"] is not None:
                self.request_latency.observe(row["latency_s"], tags={"model": self.model, "task": task})
        if sum(audio.values()) > 0:
            self.audio_seconds.inc(sum(audio.values()), tags={"model": self.model})
        for (task, reason), n in requests.items():
            self.requests.inc(n, tags={"model": self.model, "task": task, "finish_reason": reason})
        counters = {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                    "reasoning_chars": self.reasoning_chars, "reasoning": self.reasoning_tokens}
        for (kind, task), n in tokens.items():
            if n > 0:  # Ray's counters take positive increments only
                counters[kind].inc(n, tags={"model": self.model, "task": task})
        for (stage, error_class), n in errors.items():
            self.errors.inc(n, tags={"model": self.model, "stage": stage, "error_class": error_class})
