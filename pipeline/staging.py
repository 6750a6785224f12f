"""Committing a file all at once, and the output's reserved folders; no Ray, so pure planning can use it.

A file is written under `_tmp/` (ignored by readers: pyarrow skips names starting with `_` or `.`) and then
moved into place, so a reader never sees half of one.
"""

from __future__ import annotations

import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import open_fs

STAGING = "_tmp"  # readers skip names starting with "_"
PLANS = "_plans"


def commit_table(fs: fsspec.AbstractFileSystem, root: str, table: pa.Table, relpath: str) -> str:
    """Write `table` to `root/relpath` all at once (staged, then moved); returns the final path."""
    staged = posixpath.join(root, STAGING, f"{uuid.uuid4().hex}.parquet")
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
