"""The CPU stage: read each file, decode it to 16 kHz mono, cut it into items, and pack the items into the
file's requests (pipeline.pack). One row per request.

A file that cannot be read or decoded yields one error row per task instead, so every file has an outcome.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from contract.audio import SAMPLE_RATE, DecodeError, decode_with_info
from contract.segment import segment
from contract.config import TaskConfig
from contract.messages import ModelInfo
from pipeline.pack import file_requests, text_tokens
from pipeline.rows import REQUEST_SCHEMA, error_columns, table
from pipeline.storage import open_fs


class ReadError(Exception):
    """The file could not be read."""


class FileTooLarge(Exception):
    """The file is over `input.max_size_mb`; it was not downloaded."""


class AudioTooLong(Exception):
    """The file is longer than `audio.max_duration_s`; only that much was decoded (memory stays bounded)."""


def read_bytes(uri: str, storage: dict | None = None) -> bytes:
    try:
        fs, path = open_fs(uri, storage)
        with fs.open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise ReadError(f"cannot read {uri}: {e}") from e


def prepare_file(source: dict[str, Any], *, max_item_s: float, search_s: float, max_duration_s: float,
                 max_size_mb: float | None = None, storage: dict | None = None) -> list[dict[str, Any]]:
    """The item rows of one listed file, or its single error row."""
    base = base_row(source)
    refused = refuse(source, base, max_size_mb)
    if refused:
        return refused
    try:
        data = read_bytes(source["source_uri"], storage)
    except ReadError as e:
        # A vanished or forbidden file will not come back by retrying; a flaky store might.
        missing = isinstance(e.__cause__, (FileNotFoundError, PermissionError))
        return [{**base, **error_columns("read", e, retryable=not missing)}]
    return prepare_audio(base, data, max_item_s=max_item_s, search_s=search_s, max_duration_s=max_duration_s)


def base_row(source: dict[str, Any]) -> dict[str, Any]:
    """The columns every row of a source's items carries."""
    return {"item_id": source["item_id"], "source_uri": source["source_uri"], "only_task": source.get("task"),
            "question": source.get("question"), "metadata": source.get("metadata"),
            "answered_tasks": source.get("answered_tasks")}


def refuse(source: dict[str, Any], base: dict[str, Any], max_size_mb: float | None) -> list[dict[str, Any]]:
    """The error row of a source that is not read at all (it names no readable object, or is too large)."""
    if source.get("error_class"):  # a manifest row naming no readable object, an unknown task, a bad shard
        return [{**base, "error_stage": "read", "error_class": source["error_class"], "error": source["error"],
                 "retryable": False}]
    if max_size_mb is not None and source["size"] > max_size_mb * 1e6:
        too_large = FileTooLarge(f"{source['source_uri']}: {source['size'] / 1e6:.1f} MB is over "
                                 f"input.max_size_mb={max_size_mb:g}")
        return [{**base, **error_columns("read", too_large, retryable=False)}]
    return []


def prepare_audio(base: dict[str, Any], data: bytes, *, max_item_s: float, search_s: float,
                  max_duration_s: float) -> list[dict[str, Any]]:
    """The item rows of one recording's bytes (a file, or a sample of a shard), or its single error row."""
    try:
        audio, cut = decode_with_info(data, max_duration_s=max_duration_s)
    except DecodeError as e:
        return [{**base, **error_columns("decode", DecodeError(f"{base['source_uri']}: {e}"), retryable=False)}]
    if cut:
        # Answering only the start would pass for the whole file: say so instead, and let the user raise it.
        too_long = AudioTooLong(f"{base['source_uri']}: longer than audio.max_duration_s={max_duration_s:g} s")
        return [{**base, **error_columns("decode", too_long, retryable=False)}]
    bounds = segment(audio, sample_rate=SAMPLE_RATE, max_s=max_item_s, search_s=search_s)
    return [{**base, "segment_index": index, "segment_count": len(bounds), "start_s": start / SAMPLE_RATE,
             "end_s": end / SAMPLE_RATE, "audio": np.ascontiguousarray(audio[start:end], np.float32).tobytes()}
            for index, (start, end) in enumerate(bounds)]


def prepare_batch(batch: pa.Table, *, tasks: list[dict[str, Any]], info: ModelInfo, handle: Any,
                  **options: Any) -> pa.Table:
    """Ray Data stage (stateless tasks): listed files in, request rows out. `tasks` are the config's (dumped),
    `info` the app's ModelInfo (its budget), `handle` the app (asked for prompt text tokens); `options` as
    `prepare_file`."""
    chosen = [TaskConfig.model_validate(t) for t in tasks]
    rows = []
    for source in batch.to_pylist():
        rows.extend(file_requests(prepare_file(source, **options), chosen, info,
                                  lambda task: text_tokens(handle, task)))
    return table(rows, REQUEST_SCHEMA)
