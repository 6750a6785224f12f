"""Pruning the output before a run, a step of its own: each file that loses rows is rewritten at once.

Removed: a second row for the same key (which only a crash between two steps of an earlier version, or two
concurrent runs, could leave; the first in file order stays) and, on `--retry-failed`, the error rows marked
retryable, whose answers the run then makes again.
"""

from __future__ import annotations

import logging
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.output import output_dataset
from pipeline.staging import commit_table
from pipeline.storage import open_fs

logger = logging.getLogger(__name__)

KEY = ["item_id", "segment_index", "part", "task", "model", "prompt"]


def prune(uri: str, *, drop_retryable: bool = False, storage: dict | None = None) -> int:
    """Remove what the module says from the output at `uri`; returns the number of rows removed."""
    fragments = list(output_dataset(uri, storage).get_fragments())
    if not fragments:
        return 0
    parts = [f.to_table(columns=[*KEY, "error_class", "retryable"]) for f in fragments]
    keys = pa.concat_tables(parts)
    keys = keys.append_column("order", pa.array(np.arange(keys.num_rows)))
    keep = np.ones(keys.num_rows, dtype=bool)
    if drop_retryable:
        keep &= ~pc.and_(pc.is_valid(keys["error_class"]), pc.fill_null(keys["retryable"], False)).to_numpy()
    kept = keys.filter(keep)
    first = kept.group_by(KEY, use_threads=False).aggregate([("order", "min")])["order_min"]
    keep &= pc.is_in(keys["order"], value_set=first).to_numpy(zero_copy_only=False)
    removed = int((~keep).sum())
    if removed:
        fs, root = open_fs(uri, storage)
        ends = np.cumsum([p.num_rows for p in parts])
        for fragment, end, part in zip(fragments, ends, parts):
            mine = keep[end - part.num_rows:end]
            if not mine.all():
                _rewrite(fs, root, fragment.path, mine)
        logger.info("removed %d superseded rows from %s", removed, uri)
    return removed


def _rewrite(fs, root: str, path: str, keep: np.ndarray) -> None:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f).filter(pa.array(keep))
    if table.num_rows:
        commit_table(fs, root, table, posixpath.relpath(path, root))
    else:
        fs.rm(path)
