"""The inference stage: async Ray Data actors that send items to the Serve app through a handle.

Each item row becomes one request per task; each request comes back as one output row. Rows that already
carry an error (the file could not be read or decoded) become one error row per task without a call.

A replica that dies takes the batches it held with it. Such a batch is sent again (a live replica takes
it); one that keeps failing is split and each request tried alone, so the one item that kills engines is
isolated and written as an error row (quarantined) instead of killing engine after engine.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from contract.config import TaskConfig, asks
from contract.messages import GenerationRequest, GenerationResult
from contract.retry import Backoff, retry
from pipeline.answered import digest
from pipeline.metrics import PipelineMetrics
from pipeline.progress import segment_reports
from pipeline.rows import OUTPUT_SCHEMA, table

logger = logging.getLogger(__name__)

# A replica that died or whose engine raised: the request may well succeed elsewhere.
ENGINE_FAILURES = (RayActorError, ActorUnavailableError, RayTaskError)
# A dead replica is replaced in about 10 s (new calls go to live ones meanwhile): with 3 attempts a batch waits
# 6-12 s in all before it is split, as long as the replacement takes.
BACKOFF = Backoff(first_s=4.0)


class Quarantined(Exception):
    """The request failed every attempt, alone, each time with its replica or engine failing."""


def request_id(item_id: str, segment_index: int | None, task: str) -> str:
    """Deterministic, so a request sent again after a failure is recognisably the same one."""
    return f"{item_id}/{segment_index}/{task}"


def _result_columns(result: GenerationResult) -> dict[str, Any]:
    errors = result.error_fields()
    return {
        "reasoning": result.reasoning, "answer": result.answer, "finish_reason": result.finish_reason,
        "truncated": result.truncated, "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens, "latency_s": result.latency_s,
        **({"error_stage": "infer", **errors} if errors else {}),
    }


class Infer:
    """Ray Data stage (async actors): item rows in, output rows out.

    `handle` is the Serve app's deployment handle, handed in by whoever opened the app (pipeline.run gets it
    from jobs/transcribe.py); each batch's requests go to its `generate`.

    `skip` holds the rows the output already has (`pipeline.answered.digest(item_id, segment_index, task,
    prompt)`) of items it holds only part of (a resumed run); those are not asked again.
    `progress` (a `pipeline.progress.ProgressCounter` actor) is told what each batch did; metrics
    (`pipeline.metrics`) are recorded from the rows it made.
    """

    def __init__(self, *, handle: Any, tasks: list[dict[str, Any]], model: str, run_id: str,
                 skip: set[bytes] = frozenset(), attempts: int = 3, progress: Any = None):
        self.handle = handle
        self.tasks = [TaskConfig.model_validate(t) for t in tasks]
        self.schemas = {t.name: t.answer_schema for t in self.tasks}
        self.common = {"model": model, "run_id": run_id}
        self.skip = skip
        self.attempts = attempts
        self.progress = progress
        self.metrics = PipelineMetrics(model)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows, requests, waiting = [], [], []
        for item in batch.to_pylist():
            audio, only_task, question = item.pop("audio"), item.pop("only_task"), item.pop("question")
            start, end = item["start_s"], item["end_s"]
            item["duration_s"] = end - start if start is not None else None
            # A manifest row naming an unknown task arrives as an error row: it is written under that name.
            chosen = asks(self.tasks, only_task, question) or [TaskConfig(name=only_task, question=question or "")]
            for task in chosen:
                if digest(item["item_id"], item["segment_index"], task.name, task.question) in self.skip:
                    continue
                row = {**item, **self.common, "task": task.name, "prompt": task.question}
                if item["error_class"]:
                    rows.append(row)
                    continue
                waiting.append(row)
                requests.append(GenerationRequest(
                    request_id=request_id(item["item_id"], item["segment_index"], task.name),
                    audio=[np.frombuffer(audio, dtype=np.float32)], question=task.question, system=task.system,
                    prefill=task.prefill, sampling=task.sampling, answer_schema=self.schemas.get(task.name),
                ))
        if requests:
            with self.metrics.calling(len(requests)):
                results = await self._generate(requests)
            rows.extend({**row, **_result_columns(result)} for row, result in zip(waiting, results, strict=True))
        now = datetime.now(timezone.utc)
        for row in rows:
            row["created_at"] = now
        out = table(rows, OUTPUT_SCHEMA)
        self.metrics.record(out)
        if self.progress is not None:
            self.progress.add.remote(segment_reports(batch, out))  # not awaited: progress never slows a batch
        return out

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        def log(n: int, error: BaseException, pause: float) -> None:
            logger.warning("batch of %d failed (attempt %d of %d): %s", len(requests), n, self.attempts,
                           str(error).splitlines()[0])

        try:
            return await retry(lambda: self.handle.generate.remote(requests), tries=self.attempts, backoff=BACKOFF,
                               retry_on=ENGINE_FAILURES, on_retry=log)
        except ENGINE_FAILURES as failure:
            if len(requests) > 1:
                return [r for parts in await asyncio.gather(*(self._generate([r]) for r in requests)) for r in parts]
            quarantined = Quarantined(f"failed {self.attempts} times alone, each time losing its replica or "
                                      f"engine; last: {type(failure).__name__}: {str(failure).splitlines()[0]}")
            return [GenerationResult.failure(requests[0].request_id, quarantined, retryable=False)]
