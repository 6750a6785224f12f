"""The rows that flow through the pipeline and the Parquet schema of what it writes.

Errors are data: a file that cannot be read or decoded, or a request the model rejects, becomes a row with
the same schema as a result, with `error_stage`, `error_class`, `error` and `retryable` set.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from contract.messages import error_fields

SEGMENT_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("source_uri", pa.string()),
    ("segment_index", pa.int32()),
    ("segment_count", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("audio", pa.binary()),  # float32 mono 16 kHz samples; bytes pass through Arrow without conversion
    ("only_task", pa.string()),  # from a manifest row: ask only this task
    ("question", pa.string()),  # from a manifest row: the item's own question
    ("metadata", pa.string()),  # from a manifest row: its other columns as a JSON object
    ("error_stage", pa.string()),
    ("error_class", pa.string()),
    ("error", pa.string()),
    ("retryable", pa.bool_()),
])

OUTPUT_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("source_uri", pa.string()),
    ("segment_index", pa.int32()),
    ("segment_count", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("duration_s", pa.float64()),
    ("task", pa.string()),
    ("prompt", pa.string()),
    ("model", pa.string()),
    ("reasoning", pa.string()),
    ("answer", pa.string()),
    ("finish_reason", pa.string()),
    ("truncated", pa.bool_()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
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
