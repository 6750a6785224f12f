"""The rows that flow through the pipeline and the Parquet schema of what it writes.

Errors are data: a file that cannot be read or decoded, or a request the model rejects, becomes a row with
the same schema as a result, with `error_stage`, `error_class`, `error` and `retryable` set.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from contract.messages import error_fields

REQUEST_SCHEMA = pa.schema([  # what prepare + pack hand to infer: one row per request (or its error)
    ("item_id", pa.string()),
    ("source_uri", pa.string()),
    ("segment_index", pa.int32()),  # scope item: the item's index; scope recording: null
    ("segment_count", pa.int32()),  # items the file was cut into
    ("start_s", pa.float64()),  # the request's audio: its first item's start ...
    ("end_s", pa.float64()),  # ... and its last item's end, in the file
    ("audio", pa.list_(pa.binary())),  # its items, float32 mono 16 kHz samples each; empty for a combining request
    ("task", pa.string()),
    # Further tasks the same request answers, one output row each as for `task`: a model that answers no
    # questions (whisper) hears each item once for all the tasks of a scope. Null: `task` alone.
    ("also_tasks", pa.list_(pa.string())),
    ("prompt", pa.string()),  # what the model is asked (ModelFormat.asked): what the row is an answer to
    ("question", pa.string()),  # the text sent: the prompt, or for a combining request the parts' answers too
    ("scope", pa.string()),
    ("part", pa.int32()),  # a window of a recording answered in several: its index; else null
    ("part_count", pa.int32()),  # windows the recording needed, when more than one
    ("request_index", pa.int32()),  # this request among the file's requests (every task), for progress
    ("request_count", pa.int32()),
    ("recording_s", pa.float64()),  # the file's length, for progress
    ("metadata", pa.string()),  # from a manifest row: its other columns as a JSON object
    ("error_stage", pa.string()),
    ("error_class", pa.string()),
    ("error", pa.string()),
    ("retryable", pa.bool_()),
])

SEGMENT = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])

OUTPUT_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("source_uri", pa.string()),
    ("segment_index", pa.int32()),
    ("segment_count", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("scope", pa.string()),  # recording: the answer is about the whole file (or one part of it); item: one item
    ("part", pa.int32()),  # a window of a recording answered in several parts; null on every answer row
    ("part_count", pa.int32()),  # windows of the recording: on its parts and on the answer combined from them
    ("task", pa.string()),
    ("prompt", pa.string()),
    ("model", pa.string()),
    ("reasoning", pa.string()),
    ("answer", pa.string()),
    ("segments", pa.list_(SEGMENT)),  # timestamped pieces of the answer, seconds in the file (whisper, recording)
    ("finish_reason", pa.string()),
    ("truncated", pa.bool_()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("queue_s", pa.float64()),
    ("error", pa.string()),
    ("error_class", pa.string()),
    ("error_stage", pa.string()),
    ("retryable", pa.bool_()),
    ("metadata", pa.string()),
    ("run_id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def error_columns(stage: str, exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    """The error columns for an exception raised at `stage`."""
    return {"error_stage": stage, **error_fields(exc, retryable=retryable)}


def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of exactly `schema` (missing keys are nulls), so every block has the same types."""
    return pa.Table.from_pylist(rows, schema=schema)
