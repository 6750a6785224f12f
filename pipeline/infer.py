"""The inference stage: async Ray Data actors that send requests to the Serve app through a handle.

Each request row (built before, by pipeline.pack) is sent as one call and comes back as one output row for
each task it answers (its `task`, and its `also_tasks` when the model answers no questions), less the rows the
output has already. Rows that already carry an error (the file could not be read or decoded, or does not fit the
budget) are written as they are, without a call.

Dispatch is per request, not per batch: an actor keeps `resources.requests_in_flight` requests at the engines,
drawn from all the batches it holds, and sends the next one the moment any is answered. Serve routes each call
to a replica on its own. So one long reasoning holds one engine sequence, not the places of its batch: Ray Data
hands an actor twice as many rows as it has room for (`batches_held`), and the rows of other batches fill the
room while a batch waits on its longest request.

A replica that dies takes the requests it held with it. Each is sent again (a live replica takes it); one that
fails every attempt is written as an error row (quarantined) instead of killing engine after engine.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from contract.config import TaskConfig
from contract.messages import GenerationRequest, GenerationResult
from contract.retry import Backoff, retry
from contract.text import summary
from pipeline.answered import row_key
from pipeline.metrics import PipelineMetrics
from pipeline.progress import report
from pipeline.rows import OUTPUT_SCHEMA, table

logger = logging.getLogger(__name__)

# A replica that died or whose engine raised: the request may well succeed elsewhere.
ENGINE_FAILURES = (RayActorError, ActorUnavailableError, RayTaskError)
# A dead replica is replaced in about 10 s (new calls go to live ones meanwhile): with 3 attempts a batch waits
# 6-12 s in all before it is split, as long as the replacement takes.
BACKOFF = Backoff(first_s=4.0)


class Quarantined(Exception):
    """The request failed every attempt, each time with its replica or engine failing."""


def batches_held(requests_in_flight: int, batch_size: int) -> int:
    """Batches an actor holds at once: rows for twice its requests in flight, so that batches waiting on one
    long request each leave enough rows in the others to keep the room full."""
    return max(1, -(-2 * requests_in_flight // batch_size))


def answering(items: Any, resources: Any, handle: Any, tasks: list[dict[str, Any]], model: str, run_id: str,
              **kwargs: Any) -> Any:
    """`items` (a Dataset of request rows) answered by a pool of Infer actors: a lazy Dataset of output rows.
    `resources` is the run's ResourcesConfig; `kwargs` go to Infer (`skip`, `progress`)."""
    import ray

    r = resources
    held = batches_held(r.requests_in_flight, r.batch_size)
    return items.map_batches(
        Infer, batch_format="pyarrow", batch_size=r.batch_size, num_cpus=r.infer_cpus,
        # Calls too, not only tasks queued: an actor runs one Ray Data task at a time by default, and a task ends
        # with its last answer, so one long request would hold the whole actor.
        compute=ray.data.ActorPoolStrategy(size=r.infer_actors, max_tasks_in_flight_per_actor=held,
                                           max_concurrent_calls_per_actor=held),
        fn_constructor_kwargs={"handle": handle, "tasks": tasks, "model": model, "run_id": run_id,
                               "requests_in_flight": r.requests_in_flight, "attempts": r.attempts, **kwargs},
    )


def request_id(item_id: str, segment_index: int | None, part: int | None, task: str) -> str:
    """Deterministic, so a request sent again after a failure is recognisably the same one."""
    return f"{item_id}/{segment_index}/{task}" if part is None else f"{item_id}/part{part}/{task}"


def _result_columns(result: GenerationResult, offset_s: float | None) -> dict[str, Any]:
    errors = result.error_fields()
    segments = None
    if result.segments is not None:  # times in the request's audio -> times in the file
        segments = [{"start": start + (offset_s or 0.0), "end": end + (offset_s or 0.0), "text": text}
                    for start, end, text in result.segments]
    return {
        "reasoning": result.reasoning, "answer": result.answer, "segments": segments,
        "finish_reason": result.finish_reason, "truncated": result.truncated, "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens, "latency_s": result.latency_s,
        "queue_s": result.queue_s,
        **({"error_stage": "infer", **errors} if errors else {}),
    }


class Infer:
    """Ray Data stage (async actors): request rows in (pipeline.rows.REQUEST_SCHEMA, built by pipeline.pack),
    output rows out, one per request.

    `handle` is the Serve app's deployment handle, handed in by whoever opened the app (pipeline.run gets it
    from jobs/transcribe.py); each request goes to its `generate_one`, at most `requests_in_flight` at once.

    `skip` holds the rows the output already has (`pipeline.answered.row_key`) of files it holds only part of
    (a resumed run); those are not asked again.
    `progress` (a `pipeline.progress.ProgressCounter` actor) is told what each batch did; metrics
    (`pipeline.metrics`) are recorded from the rows it made.
    """

    def __init__(self, *, handle: Any, tasks: list[dict[str, Any]], model: str, run_id: str,
                 skip: set[bytes] = frozenset(), requests_in_flight: int = 16, attempts: int = 3,
                 progress: Any = None):
        self.handle = handle
        self.requests_in_flight = requests_in_flight
        self._room: asyncio.Semaphore | None = None  # made on the loop Ray Data runs the batches on
        self.tasks = {t.name: t for t in (TaskConfig.model_validate(t) for t in tasks)}
        self.schemas = {name: t.answer_schema for name, t in self.tasks.items()}
        self.common = {"model": model, "run_id": run_id}
        self.skip = skip
        self.attempts = attempts
        self.progress = progress
        self.metrics = PipelineMetrics(model)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows, requests, waiting, reports = [], [], [], []
        for item in batch.to_pylist():
            audio, question = item.pop("audio"), item.pop("question")
            progress = [item.pop(k) for k in ("request_index", "request_count", "recording_s")]
            tasks = [item["task"], *(item.pop("also_tasks") or [])]
            start, end = item["start_s"], item["end_s"]
            item["duration_s"] = end - start if start is not None else None
            todo = [{**item, "task": name, **self.common} for name in tasks
                    if row_key(item["item_id"], item["segment_index"], item["part"], name, item["prompt"])
                    not in self.skip]
            reports.append((item["item_id"], *progress, todo))
            if not todo:
                continue
            if item["error_class"]:
                rows.extend(todo)
                continue
            task = self.tasks[todo[0]["task"]]
            waiting.append(todo)
            rid = request_id(item["item_id"], item["segment_index"], item["part"], task.name)
            requests.append(GenerationRequest(
                request_id=rid, audio=[np.frombuffer(a, dtype=np.float32) for a in audio or []],
                question=question or "", system=task.system, prefill=task.prefill,
                sampling=task.sampling.for_request(rid),
                recording=item["scope"] == "recording", answer_schema=self.schemas[task.name],
            ))
        now = datetime.now(timezone.utc)
        for row in rows:  # error rows from before, made now
            row["created_at"] = now
        if requests:
            results = await asyncio.gather(*(self._answer(r) for r in requests))
            for todo, (result, answered_at) in zip(waiting, results, strict=True):
                answered = _result_columns(result, todo[0]["start_s"])
                for row in todo:
                    row.update(answered, created_at=answered_at)
                rows.extend(todo)
        out = table(rows, OUTPUT_SCHEMA)
        self.metrics.record(out)
        if self.progress is not None:  # not awaited: progress never slows a batch
            self.progress.add.remote([report(*r) for r in reports])
        return out

    async def _answer(self, request: GenerationRequest) -> tuple[GenerationResult, datetime]:
        """The request's result and when it came, once there was room for it among the actor's requests in
        flight."""
        def log(n: int, error: BaseException, pause: float) -> None:
            logger.warning("request %s failed (attempt %d of %d): %s", request.request_id, n, self.attempts,
                           summary(str(error).splitlines()[0] if str(error) else type(error).__name__))

        if self._room is None:
            self._room = asyncio.Semaphore(self.requests_in_flight)
        async with self._room:
            with self.metrics.calling():
                try:
                    result = await retry(lambda: self.handle.generate_one.remote(request), tries=self.attempts,
                                         backoff=BACKOFF, retry_on=ENGINE_FAILURES, on_retry=log)
                except ENGINE_FAILURES as failure:
                    last = summary((str(failure) or "-").splitlines()[0])
                    quarantined = Quarantined(f"failed {self.attempts} times, each time losing its replica or "
                                              f"engine; last: {type(failure).__name__}: {last}")
                    result = GenerationResult.failure(request.request_id, quarantined, retryable=False)
        return result, datetime.now(timezone.utc)
