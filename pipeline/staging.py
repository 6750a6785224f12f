"""Committing a file all at once, and the output's reserved folders; no Ray, so pure planning can use it.

A file is written under `_tmp/` and then moved into place, so a reader never sees half of one. What the job keeps
under its own folders never ends in `.parquet` (staged files end in `.staged`, plans in `.plan`): pyarrow and
Spark skip folders starting with `_`, but DuckDB's `read_parquet('<uri>/**/*.parquet')` does not, and would
read a dead run's leftovers as answers.
"""

from __future__ import annotations

import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import open_fs

STAGING = "_tmp"
PLANS = "_plans"
STAGED_SUFFIX = ".staged"  # never ".parquet": a glob for answers must not match what is not one yet
PLAN_SUFFIX = ".plan"


def staged_path(root: str) -> str:
    """A new path to stage a file at, under `root`'s `_tmp/`."""
    return posixpath.join(root, STAGING, f"{uuid.uuid4().hex}{STAGED_SUFFIX}")


def commit_table(fs: fsspec.AbstractFileSystem, root: str, table: pa.Table, relpath: str) -> str:
    """Write `table` to `root/relpath` all at once (staged, then moved); returns the final path."""
    staged = staged_path(root)
    final = posixpath.join(root, relpath)
    fs.makedirs(posixpath.dirname(staged), exist_ok=True)
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    with fs.open(staged, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(staged, final)
    return final


def remove_leftovers(uri: str, storage: dict | None = None) -> None:
    """Staged files and plans a killed run left behind; never read, only taking space. Call it only while
    holding the output's lease (pipeline.lease), so no live run's files are taken."""
    fs, root = open_fs(uri, storage)
    for folder in (STAGING, PLANS):
        path = posixpath.join(root, folder)
        if fs.exists(path):
            fs.rm(path, recursive=True)
