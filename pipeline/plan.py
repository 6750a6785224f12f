"""Which files this run works on: the listing minus what the output already answers.

The plan is streamed to a Parquet file beside the output (`_plans/`, which readers skip) in chunks, so the
driver's memory does not grow with the number of files, and Ray Data reads it back in parallel.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.sink import PLANS
from pipeline.sources import SourceFile

PLAN_SCHEMA = pa.schema([("item_id", pa.string()), ("source_uri", pa.string()), ("size", pa.int64()),
                         ("version", pa.string())])
CHUNK = 10_000


@dataclass
class Plan:
    path: str  # the plan file, on the output's filesystem
    listed: int  # audio files found
    todo: int  # of which this run works on


def write_plan(sources: Iterable[SourceFile], skip: set[str], output_uri: str, run_id: str) -> Plan:
    """Stream `sources`, less the item ids in `skip`, to `<output>/_plans/<run_id>.parquet`."""
    fs, root = url_to_fs(output_uri)
    path = posixpath.join(root, PLANS, f"{run_id}.parquet")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    listed = todo = 0
    sources = iter(sources)
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, PLAN_SCHEMA) as writer:
        while chunk := list(itertools.islice(sources, CHUNK)):
            listed += len(chunk)
            rows = [s.as_row() for s in chunk if s.item_id not in skip]
            todo += len(rows)
            writer.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
    return Plan(fs.unstrip_protocol(path) if "://" in output_uri else path, listed, todo)


def remove_plan(plan: Plan) -> None:
    fs, path = url_to_fs(plan.path)
    fs.rm(path)
