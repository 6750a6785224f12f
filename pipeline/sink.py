"""Writing the answered rows: committed from the driver, a file at a time, so an interrupted run keeps them.

The driver takes the inference stage's blocks as they come and commits a Parquet file (pipeline.staging: staged,
then moved into place, so a reader never sees half of one) every `rows_per_file` rows, or once the oldest row
held has waited `max_wait_s`, whichever comes first. When the run stops for any reason (Ctrl-C, SIGTERM, an
error) the rows held are committed before it exits: a stop loses at most the blocks still on their way to the
driver, and a kill -9 at most `max_wait_s` of answers. Rows are text (the audio stays behind), so the driver
handles a small fraction of what the engines make.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.rows import OUTPUT_SCHEMA
from pipeline.staging import commit_table
from pipeline.storage import open_fs

MAX_WAIT_S = 60.0


def partition(now: datetime | None = None) -> str:
    """Hive-style folder per run date, so nightly runs land apart and still read as one dataset."""
    return f"run_date={(now or datetime.now(timezone.utc)).strftime('%Y-%m-%d')}"


class OutputWriter:
    """Gathers output rows (OUTPUT_SCHEMA tables) and commits them as `<uri>/run_date=.../part-<run_id>-<n>`
    files; `rows` and `errors` count what it has committed."""

    def __init__(self, uri: str, run_id: str, rows_per_file: int, storage: dict | None = None,
                 max_wait_s: float = MAX_WAIT_S):
        self.fs, self.root = open_fs(uri, storage)
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.max_wait_s = max_wait_s
        self.folder = partition()
        self.files: list[str] = []
        self.rows = self.errors = 0
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._oldest = 0.0

    def add(self, table: pa.Table) -> None:
        """Hold `table`'s rows; commit a file when enough rows are held, or the oldest has waited long enough."""
        if table.num_rows:
            if not self._held:
                self._oldest = time.monotonic()
            self._held.append(table)
            self._held_rows += table.num_rows
        if self._held_rows >= self.rows_per_file or (self._held and time.monotonic() - self._oldest >= self.max_wait_s):
            self.flush()

    def flush(self) -> None:
        """Commit every row held, `rows_per_file` to a file."""
        if not self._held:
            return
        held = pa.concat_tables(self._held).cast(OUTPUT_SCHEMA)
        for start in range(0, held.num_rows, self.rows_per_file):
            part = held.slice(start, self.rows_per_file)
            name = f"{self.folder}/part-{self.run_id}-{len(self.files):06d}.parquet"
            self.files.append(commit_table(self.fs, self.root, part, name))
            self.rows += part.num_rows
            self.errors += pc.count(part["error_class"]).as_py()  # counts the non-null ones
            # Dropped as soon as they are on disk: a failure in the next file does not write these twice.
            self._held, self._held_rows = [held.slice(start + part.num_rows)], held.num_rows - start - part.num_rows
        self._held, self._held_rows = [], 0
