"""Writing output files so that a reader never sees half of one and a retried write adds nothing.

Each write task commits one Parquet file (pipeline.staging). File names are fixed by the run and the write task's
index, so a write task that Ray retries replaces its own file instead of adding a second copy of its rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from pipeline.rows import OUTPUT_SCHEMA
from pipeline.staging import commit_table
from pipeline.storage import open_fs


def partition(now: datetime | None = None) -> str:
    """Hive-style folder per run date, so nightly runs land apart and still read as one dataset."""
    return f"run_date={(now or datetime.now(timezone.utc)).strftime('%Y-%m-%d')}"


class ParquetSink(Datasink[list[str]]):
    """Ray Data sink for the output table: one committed file per write task."""

    def __init__(self, uri: str, run_id: str, rows_per_file: int, storage: dict | None = None):
        self.uri = uri
        self.storage = storage
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.folder = partition()

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx) -> list[str]:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return []
        fs, root = open_fs(self.uri, self.storage)
        table = pa.concat_tables(tables).cast(OUTPUT_SCHEMA)
        return [commit_table(fs, root, table, f"{self.folder}/part-{self.run_id}-{ctx.task_idx:06d}.parquet")]
