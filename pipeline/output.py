"""Reading the output back: the one reader that the resume scan, the run summary and the report share.

The output is read as one `pyarrow.dataset` with its filter pushed down, so Parquet row groups whose statistics
rule a filter out (another run, another model) are not read.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.rows import OUTPUT_SCHEMA
from pipeline.storage import open_fs


def output_files(uri: str, storage: dict | None = None) -> list[str]:
    """The Parquet files of the dataset at `uri`, as pyarrow reads them (no `_` or `.` names on the way)."""
    fs, root = open_fs(uri, storage)
    fs.invalidate_cache()  # workers wrote below here since this process last listed (s3fs caches folders)
    if not fs.exists(root):
        return []
    files = []
    for path in fs.find(root):
        parts = posixpath.relpath(path, root).split("/")
        if path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
            files.append(path)
    return sorted(files)


def output_dataset(uri: str, storage: dict | None = None) -> pads.Dataset:
    """The output's files as one dataset of OUTPUT_SCHEMA (a column an older file lacks reads as nulls)."""
    fs, _ = open_fs(uri, storage)
    return pads.dataset(output_files(uri, storage), schema=OUTPUT_SCHEMA, filesystem=fs, format="parquet")


def read_output(uri: str, columns: list[str], where: pc.Expression | None = None,
                storage: dict | None = None) -> pa.Table:
    """`columns` of the output's rows that match `where` (all rows when None)."""
    return output_dataset(uri, storage).to_table(columns=list(columns), filter=where)


def audio_seconds(rows: pa.Table) -> float:
    """Seconds of audio behind `rows` (with item_id, start_s, end_s): per file, the span its rows cover
    (earliest start to latest end), counted once whatever the tasks, items, windows and scopes asked of it;
    file-level error rows have no audio."""
    cut = rows.filter(pc.is_valid(rows["start_s"]))
    files = cut.group_by(["item_id"]).aggregate([("start_s", "min"), ("end_s", "max")])
    return float(pc.sum(pc.subtract(files["end_s_max"], files["start_s_min"])).as_py() or 0.0)
