"""The CPU stage: read each file, decode it to 16 kHz mono, cut it into items. One row per item.

A file that cannot be read or decoded yields one error row instead, so every file has an outcome.
"""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.audio import SAMPLE_RATE, DecodeError, decode_with_info
from pipeline.rows import SEGMENT_SCHEMA, error_fields, table
from pipeline.segment import segment


class ReadError(Exception):
    """The file could not be read."""


class AudioTooLong(Exception):
    """The file is longer than `audio.max_duration_s`; only that much was decoded (memory stays bounded)."""


def read_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise ReadError(f"cannot read {uri}: {e}") from e


def prepare_file(source: dict[str, Any], *, max_item_s: float, search_s: float,
                 max_duration_s: float) -> list[dict[str, Any]]:
    """The item rows of one listed file, or its single error row."""
    base = {"item_id": source["item_id"], "source_uri": source["source_uri"]}
    try:
        data = read_bytes(source["source_uri"])
    except ReadError as e:
        # A vanished or forbidden file will not come back by retrying; a flaky store might.
        missing = isinstance(e.__cause__, (FileNotFoundError, PermissionError))
        return [{**base, **error_fields("read", e, retryable=not missing)}]
    try:
        audio, cut = decode_with_info(data, max_duration_s=max_duration_s)
    except DecodeError as e:
        return [{**base, **error_fields("decode", DecodeError(f"{source['source_uri']}: {e}"), retryable=False)}]
    if cut:
        # Answering only the start would pass for the whole file: say so instead, and let the user raise it.
        too_long = AudioTooLong(f"{source['source_uri']}: longer than audio.max_duration_s={max_duration_s:g} s")
        return [{**base, **error_fields("decode", too_long, retryable=False)}]
    bounds = segment(audio, sample_rate=SAMPLE_RATE, max_s=max_item_s, search_s=search_s)
    return [{**base, "segment_index": index, "segment_count": len(bounds), "start_s": start / SAMPLE_RATE,
             "end_s": end / SAMPLE_RATE, "audio": np.ascontiguousarray(audio[start:end], np.float32).tobytes()}
            for index, (start, end) in enumerate(bounds)]


def prepare_batch(batch: pa.Table, **options: Any) -> pa.Table:
    """Ray Data stage (stateless tasks): listed files in, item rows out. `options` as `prepare_file`."""
    rows = []
    for source in batch.to_pylist():
        rows.extend(prepare_file(source, **options))
    return table(rows, SEGMENT_SCHEMA)
