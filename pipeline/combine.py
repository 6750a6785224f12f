"""One answer per recording, also for recordings too long for one request.

A recording answered in several windows (`part` 0..part_count-1, pipeline.pack) gets one more request once all
its parts are in the output: text only, the task's question and the parts' answers in order with their time
ranges. Its row is the recording's answer (`part` null, `part_count` = the parts combined); the part rows stay.
A part that failed makes the answer an error row instead (retryable if that part's error was).

It runs after the run's main pass and reads what to do from the output itself, so it is exactly-once and
resumable on its own: a run that died between the parts and this pass is finished by the next run (which asks
only the parts still missing, then combines), and a rerun finds nothing to combine.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.answered import ASK
from pipeline.output import read_output
from pipeline.rows import REQUEST_SCHEMA, table

PART_COLUMNS = [*ASK, "source_uri", "segment_count", "scope", "part", "part_count", "start_s", "end_s", "answer",
                "error_class", "error", "retryable", "metadata"]


class PartFailed(Exception):
    """A window of the recording could not be answered, so its parts cannot be combined."""


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def combining_question(question: str, parts: list[dict[str, Any]]) -> str:
    """The text of the combining request: the question, then each part's answer with its time range."""
    end = clock(parts[-1]["end_s"])
    heard = "\n\n".join(
        f"Part {p['part'] + 1} of {len(parts)} ({clock(p['start_s'])}-{clock(p['end_s'])}):\n"
        f"{(p['answer'] or '(no answer: cut off)').strip()}" for p in parts)
    return (f"A recording of {end} was too long to hear at once, so it was heard in {len(parts)} consecutive parts "
            f"and this question was answered for each part:\n\n{question}\n\n{heard}\n\n"
            f"Answer the question for the whole recording, from the answers for its parts: {question}")


def pending(output_uri: str, model: str, storage: dict | None = None) -> pa.Table:
    """Request rows (REQUEST_SCHEMA) for every recording whose parts are all in the output and whose answer is
    not: a combining request, or an error row when a part failed."""
    is_model = pc.field("model") == model
    parts = read_output(output_uri, PART_COLUMNS, is_model & pc.field("part").is_valid(), storage)
    if not parts.num_rows:
        return table([], REQUEST_SCHEMA)
    answers = read_output(output_uri, ASK, is_model & pc.field("part").is_null()
                          & pc.field("segment_index").is_null(), storage)
    answered = set(zip(*(answers[c].to_pylist() for c in ASK)))
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for row in parts.to_pylist():
        key = tuple(row[c] for c in ASK)
        if key not in answered:
            groups[key].setdefault(row["part"], row)
    rows = []
    for key, by_part in groups.items():
        count = next(iter(by_part.values()))["part_count"]
        if sorted(by_part) != list(range(count)):
            continue  # parts still missing: the next run asks them first
        rows.append(_combining_row([by_part[i] for i in range(count)]))
    return table(rows, REQUEST_SCHEMA)


def _combining_row(parts: list[dict[str, Any]]) -> dict[str, Any]:
    first = parts[0]
    row = {k: first[k] for k in ("item_id", "source_uri", "task", "prompt", "segment_count", "scope", "metadata")}
    row.update(start_s=first["start_s"], end_s=parts[-1]["end_s"], part_count=len(parts), audio=[],
               request_index=0, request_count=1, recording_s=parts[-1]["end_s"])
    failed = [p for p in parts if p["error_class"]]
    if failed:
        p = failed[0]
        error = PartFailed(f"part {p['part'] + 1} of {len(parts)} ({clock(p['start_s'])}-{clock(p['end_s'])}) "
                           f"failed: {p['error_class']}: {p['error']}")
        return {**row, "error_stage": "combine", "error_class": type(error).__name__, "error": str(error),
                "retryable": any(bool(p["retryable"]) for p in failed)}
    return {**row, "question": combining_question(first["prompt"], parts)}


def combining(config: Any, model: str, run_id: str, handle: Any) -> Any:
    """The combining requests that the output calls for (`pending`), answered by the same inference stage as the
    main pass: a lazy Dataset of their rows for the run's writer, or None when there is nothing to combine.
    `config` is the run's Config."""
    import ray

    from pipeline.infer import answering

    r = config.resources
    todo = pending(config.output.uri, model, config.storage.model_dump())
    if not todo.num_rows:
        return None
    blocks = [todo.slice(i, r.batch_size) for i in range(0, todo.num_rows, r.batch_size)]
    return answering(ray.data.from_arrow(blocks), r, handle, [t.model_dump() for t in config.tasks], model, run_id)
