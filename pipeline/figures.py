"""The report's figures, computed from the output's rows into one typed summary (`Figures`).

Adding a figure: a field on the section it belongs to (or a new section on `Figures`), its value computed in
`summarize`, and a line in `templates/report.html` where the page shows it. `report.json` is `Figures.to_dict()`,
so the field appears there by itself.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contract.answers import MAX_LABELS, labelled_fields
from pipeline.output import audio_seconds

EXAMPLES = 3  # error examples kept per error class
COST_BASIS = "wall time x mean running replicas x GPUs per replica x price per GPU-hour"
REASONING_NOTE = "reasoning tokens are estimated: completion tokens split by the characters of reasoning and answer"
OCCUPANCY_BASIS = ("each engine's own count of running sequences over its capacity (max_num_seqs, whisper's "
                   "workers), sampled every 0.5 s on every replica, weighted by time")


@dataclass
class Distribution:
    """Count, mean and percentiles (numpy's linear interpolation) of the non-null values."""

    count: int = 0
    mean: float | None = None
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: pa.ChunkedArray) -> Distribution:
        array = np.asarray(values.drop_null().to_numpy(), dtype=float) if len(values) else np.empty(0)
        if not array.size:
            return cls()
        p50, p90, p95, p99 = np.percentile(array, [50, 90, 95, 99])
        return cls(int(array.size), float(array.mean()), float(array.min()), float(p50), float(p90), float(p95),
                   float(p99), float(array.max()))


@dataclass
class Counts:
    rows: int
    answered_rows: int
    error_rows: int
    requests: int  # rows the model answered or failed
    files: int
    segments: int
    tasks: dict[str, int]
    models: dict[str, int]
    finish_reasons: dict[str, int]
    truncated: int  # reasoning never finished


@dataclass
class Audio:
    seconds: float
    hours: float


@dataclass
class Throughput:
    audio_hours_per_hour: float | None
    rows_per_s: float | None
    requests_per_s: float | None
    completion_tokens_per_s: float | None


@dataclass
class Tokens:
    prompt: int
    completion: int
    reasoning_estimated: float
    reasoning_chars: int
    completion_per_audio_hour: float | None
    reasoning_estimated_per_audio_hour: float | None
    note: str = REASONING_NOTE


@dataclass
class ErrorClass:
    stage: str | None
    error_class: str
    count: int
    retryable: int
    examples: list[dict[str, Any]]  # source_uri, segment_index, task, error (cut at 500 characters)


@dataclass
class Errors:
    total: int
    by_class: list[ErrorClass]  # most rows first


@dataclass
class Run:
    run_id: str
    started_at: str | None
    wall_s: float
    wall_estimated: bool  # no run.json: first to last row
    rows: int
    files: int
    error_rows: int
    audio_s: float
    audio_hours_per_hour: float | None
    gpu_hours: float | None  # None without the run's recorded facts
    gpu_hour_price: float | None
    currency: str | None
    files_listed: int | None
    files_skipped: int | None


@dataclass
class Cost:
    gpu_hours: float
    gpu_hour_price: float | None  # the override given to the report; None: each run's own
    currency: str
    estimated_cost: float | None
    runs_priced: int
    runs_without_facts: int
    basis: str = COST_BASIS
    per_audio_hour: float | None = None


@dataclass
class EngineOccupancy:
    """How full the engines kept their batches over the runs (contract.messages.Occupancy, combined by the
    replica-seconds each run sampled); mean and under_90 None: not measured (an engine that cannot count its
    sequences, or runs recorded without it)."""

    mean: float | None
    under_90: float | None  # share of the replica-time with the batch under 90% of its capacity
    replica_s: float
    runs_measured: int
    basis: str = OCCUPANCY_BASIS


@dataclass
class Recordings:
    """Tasks of scope recording (one answer per recording and task)."""

    answers: int  # answer rows: one per (recording, task)
    requests_per_recording: Distribution  # per (recording, task): its windows' requests, plus the combining one
    audio_s_per_request: Distribution  # audio seconds each request heard
    in_parts: int  # answers combined from several windows (the recording did not fit one request)
    parts: int  # window rows of those


@dataclass
class Figures:
    output_uri: str
    run_ids: list[str]
    counts: Counts
    audio: Audio
    wall_s: float
    wall_estimated: bool
    throughput: Throughput
    tokens: Tokens
    latency_s: Distribution  # the engine's own time per request
    queue_s: Distribution  # the wait in the replica for an engine slot, before it
    reasoning_chars: Distribution
    answer_chars: Distribution
    completion_tokens: Distribution
    errors: Errors
    cost: Cost
    runs: list[Run]
    recordings: Recordings
    occupancy: EngineOccupancy
    # task -> labelled field ("" for a label answer) -> value -> answered rows, for tasks with an answer schema
    labels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    generated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combined(rows: pa.Table) -> pa.Array:
    """Which rows are answers combined from a recording's parts (they heard no audio themselves)."""
    return pc.fill_null(pc.and_(pc.is_null(rows["part"]), pc.is_valid(rows["part_count"])), False)


def segments(rows: pa.Table) -> pa.Table:
    """One row per piece of audio a request heard (an item, a window of a recording, or a whole recording): its
    duration and when its first row was made."""
    heard = rows.filter(pc.and_(pc.is_valid(rows["start_s"]), pc.invert(combined(rows))))
    return heard.group_by(["item_id", "start_s"]).aggregate([("duration_s", "max"), ("created_at", "min")])


def recordings(rows: pa.Table) -> Recordings:
    """Scope recording: how many requests each recording took and how much audio each request held."""
    mine = rows.filter(pc.equal(rows["scope"], "recording"))
    asked = mine.filter(pc.is_valid(mine["finish_reason"]))
    heard = asked.filter(pc.invert(combined(asked)))
    per = asked.group_by(["item_id", "task"]).aggregate([("finish_reason", "count")])
    answers = mine.filter(pc.and_(pc.is_null(mine["part"]), pc.is_null(mine["segment_index"])))
    return Recordings(
        answers=answers.num_rows, requests_per_recording=Distribution.of(per["finish_reason_count"]),
        audio_s_per_request=Distribution.of(heard["duration_s"]),
        in_parts=_sum(pc.cast(combined(answers), pa.int64())),
        parts=mine.filter(pc.is_valid(mine["part"])).num_rows)


def summarize(rows: pa.Table, facts: dict[str, dict], *, output_uri: str, run_ids: list[str] | None = None,
              gpu_hour_price: float | None = None, answers: pa.Table | None = None) -> Figures:
    """The report's figures, from the rows (`report.load_rows`) and the runs' recorded facts; `answers` (task,
    answer) of the tasks with an answer schema give the label tallies."""
    errors = rows.filter(pc.is_valid(rows["error_class"]))
    asked = rows.filter(pc.is_valid(rows["finish_reason"]))
    answered = rows.filter(pc.is_null(rows["error_class"]))
    audio_s = audio_seconds(rows)
    # Every run asked for, or else every run with rows or recorded facts (a run that found nothing new has none)
    chosen = set(run_ids) if run_ids is not None else set(rows["run_id"].to_pylist()) | set(facts)
    runs = [_run(run_id, rows, facts.get(run_id)) for run_id in sorted(chosen)]
    wall_s = sum(r.wall_s for r in runs)
    completion = _sum(asked["completion_tokens"])
    reasoning_est = float(pc.sum(asked["reasoning_tokens"]).as_py() or 0.0)
    audio_h = audio_s / 3600
    cost = _cost(runs, gpu_hour_price)
    if cost.estimated_cost is not None and audio_h:
        cost.per_audio_hour = cost.estimated_cost / audio_h
    return Figures(
        output_uri=output_uri,
        run_ids=[r.run_id for r in runs],
        counts=Counts(rows=rows.num_rows, answered_rows=answered.num_rows, error_rows=errors.num_rows,
                      requests=asked.num_rows, files=_distinct(rows["item_id"]),
                      segments=segments(rows).num_rows, tasks=_tally(rows["task"]), models=_tally(rows["model"]),
                      finish_reasons=_tally(asked["finish_reason"]),
                      truncated=_sum(pc.cast(pc.fill_null(asked["truncated"], False), pa.int64()))),
        audio=Audio(seconds=audio_s, hours=audio_h),
        wall_s=wall_s,
        wall_estimated=any(r.wall_estimated for r in runs),
        throughput=Throughput(audio_hours_per_hour=_per(audio_s, wall_s), rows_per_s=_per(rows.num_rows, wall_s),
                              requests_per_s=_per(asked.num_rows, wall_s),
                              completion_tokens_per_s=_per(completion, wall_s)),
        tokens=Tokens(prompt=_sum(asked["prompt_tokens"]), completion=completion, reasoning_estimated=reasoning_est,
                      reasoning_chars=_sum(asked["reasoning_chars"]),
                      completion_per_audio_hour=_per(completion, audio_h),
                      reasoning_estimated_per_audio_hour=_per(reasoning_est, audio_h)),
        latency_s=Distribution.of(asked["latency_s"]),
        queue_s=Distribution.of(asked["queue_s"]),
        reasoning_chars=Distribution.of(answered["reasoning_chars"]),
        answer_chars=Distribution.of(answered["answer_chars"]),
        completion_tokens=Distribution.of(answered["completion_tokens"]),
        errors=Errors(total=errors.num_rows, by_class=_error_classes(errors)),
        cost=cost,
        runs=runs,
        recordings=recordings(rows),
        occupancy=combined_occupancy([facts[r.run_id] for r in runs if r.run_id in facts]),
        labels=label_tallies(answers, answer_schemas(facts)) if answers is not None else {},
    )


def combined_occupancy(facts: list[dict]) -> EngineOccupancy:
    """The runs' recorded occupancies as one, each weighted by the replica-seconds it sampled."""
    measured = [f["occupancy"] for f in facts if f.get("occupancy")]
    replica_s = sum(o["replica_s"] for o in measured)
    if not replica_s:
        return EngineOccupancy(mean=None, under_90=None, replica_s=0.0, runs_measured=0)
    return EngineOccupancy(mean=sum(o["mean"] * o["replica_s"] for o in measured) / replica_s,
                           under_90=sum(o["under_90"] * o["replica_s"] for o in measured) / replica_s,
                           replica_s=replica_s, runs_measured=len(measured))


def answer_schemas(facts: dict[str, dict]) -> dict[str, dict]:
    """Each task's answer schema as the runs recorded it (a later run's wins)."""
    schemas: dict[str, dict] = {}
    for run_id in sorted(facts):
        schemas.update(facts[run_id].get("answers") or {})
    return schemas


def label_tallies(answers: pa.Table, schemas: dict[str, dict]) -> dict[str, dict[str, dict[str, int]]]:
    """How often each value of each labelled field was answered, per task (at most MAX_LABELS values a field,
    most frequent first; values written as JSON, so `true`, `"angry"`)."""
    tallies: dict[str, dict[str, dict[str, int]]] = {}
    for task, schema in sorted(schemas.items()):
        fields = labelled_fields(schema)
        if not fields:
            continue
        counts: dict[str, Counter] = {name: Counter() for name in fields}
        for text in answers.filter(pc.equal(answers["task"], task))["answer"].to_pylist():
            try:
                value = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                continue
            for name in fields:
                if name == "":
                    counts[name][json.dumps(value)] += 1
                elif isinstance(value, dict) and name in value:
                    counts[name][json.dumps(value[name])] += 1
        tallies[task] = {name: dict(c.most_common(MAX_LABELS)) for name, c in counts.items()}
    return tallies


def _per(amount: float, over: float) -> float | None:
    return amount / over if over else None


def _sum(column: pa.ChunkedArray) -> int:
    return int(pc.sum(column).as_py() or 0)


def _distinct(column: pa.ChunkedArray) -> int:
    return len(pc.unique(column)) if len(column) else 0


def _tally(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null()).to_pylist() if len(column) else []
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}


def _run(run_id: str, rows: pa.Table, facts: dict | None) -> Run:
    own = rows.filter(pc.equal(rows["run_id"], run_id))
    wall_s, estimated = _run_wall(own, facts)
    audio_s = audio_seconds(own)
    gpu_hours = None
    if facts:
        replicas = facts.get("mean_replicas") or facts.get("replicas_configured") or 0
        gpu_hours = wall_s * replicas * facts.get("gpus_per_replica", 0) / 3600
    recorded = facts or {}
    return Run(run_id=run_id, started_at=recorded.get("started_at"), wall_s=wall_s, wall_estimated=estimated,
               rows=own.num_rows, files=_distinct(own["item_id"]),
               error_rows=own.filter(pc.is_valid(own["error_class"])).num_rows, audio_s=audio_s,
               audio_hours_per_hour=_per(audio_s, wall_s), gpu_hours=gpu_hours,
               gpu_hour_price=recorded.get("gpu_hour_price"), currency=recorded.get("currency"),
               files_listed=recorded.get("files_listed"), files_skipped=recorded.get("files_skipped"))


def _run_wall(own: pa.Table, facts: dict | None) -> tuple[float, bool]:
    """A run's wall time, and whether it is estimated (no run.json: first to last row)."""
    if facts and facts.get("wall_s") is not None:
        return float(facts["wall_s"]), False
    first, last = pc.min(own["created_at"]).as_py(), pc.max(own["created_at"]).as_py()
    return ((last - first).total_seconds() if first and last else 0.0), True


def _cost(runs: list[Run], price_override: float | None) -> Cost:
    gpu_hours, cost, priced, unknown = 0.0, 0.0, 0, 0
    currency = None
    for run in runs:
        if run.gpu_hours is None:
            unknown += 1
            continue
        gpu_hours += run.gpu_hours
        price = price_override if price_override is not None else run.gpu_hour_price
        if price is not None:
            cost += run.gpu_hours * price
            priced += 1
            currency = currency or run.currency
    return Cost(gpu_hours=gpu_hours, gpu_hour_price=price_override, currency=currency or "USD",
                estimated_cost=cost if priced else None, runs_priced=priced, runs_without_facts=unknown)


def _error_classes(errors: pa.Table) -> list[ErrorClass]:
    by_class = []
    keys = errors.group_by(["error_stage", "error_class"]).aggregate([]).to_pylist()
    for key in sorted(keys, key=lambda k: (k["error_stage"] or "", k["error_class"])):
        stage = key["error_stage"]
        same_stage = pc.equal(errors["error_stage"], stage) if stage is not None else pc.is_null(errors["error_stage"])
        these = errors.filter(pc.and_(pc.equal(errors["error_class"], key["error_class"]), same_stage))
        examples = these.slice(0, EXAMPLES).select(["source_uri", "segment_index", "task", "error"]).to_pylist()
        for example in examples:
            if example["error"] and len(example["error"]) > 500:
                example["error"] = example["error"][:500] + "..."
        by_class.append(ErrorClass(stage=stage, error_class=key["error_class"], count=these.num_rows,
                                   retryable=_sum(pc.cast(these["retryable"], pa.int64())), examples=examples))
    by_class.sort(key=lambda e: -e.count)
    return by_class
