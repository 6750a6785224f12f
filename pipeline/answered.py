"""What the output already holds, so a rerun answers only what is missing: resume and incremental runs.

An item is answered for a task when the output has, for this model and prompt, either one row for each of
its segments or its one item-level error row (the file could not be read or decoded). Scanning also prunes
the output, each file rewritten at once: a second row for the same key (which only a crash between two
steps of an earlier version, or two concurrent runs, could leave) and, on `--retry-failed`, error rows
marked retryable, whose answers this run then makes again.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.sink import commit_table

logger = logging.getLogger(__name__)

KEY = ("item_id", "segment_index", "task", "model", "prompt")
COLUMNS = (*KEY, "segment_count", "error_class", "retryable")


@dataclass
class Answered:
    complete: set[str] = field(default_factory=set)  # item ids answered for every task of this run
    partial: set[tuple[str, int | None, str]] = field(default_factory=set)  # rows present of unfinished items
    rows: int = 0  # rows of this model and these prompts already in the output
    pruned: int = 0  # rows removed from the output by this scan


def output_files(uri: str) -> list[str]:
    """The Parquet files of the dataset at `uri`, as pyarrow reads them (no `_` or `.` names on the way)."""
    fs, root = url_to_fs(uri)
    if not fs.exists(root):
        return []
    files = []
    for path in fs.find(root):
        parts = posixpath.relpath(path, root).split("/")
        if path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
            files.append(path)
    return sorted(files)


def scan(uri: str, tasks: dict[str, str], model: str, *, drop_retryable: bool = False) -> Answered:
    """What `uri` answers for `tasks` ({name: prompt}) with `model`; prunes as the module says."""
    fs, _ = url_to_fs(uri)
    answered = Answered()
    seen: set[tuple] = set()
    present: dict[tuple[str, str], set[int | None]] = defaultdict(set)  # (item, task) -> segment indices
    counts: dict[tuple[str, str], int | None] = {}  # (item, task) -> segments of the item
    for path in output_files(uri):
        with fs.open(path, "rb") as f:
            keys = pq.read_table(f, columns=list(COLUMNS))
        keep = []
        for row in keys.to_pylist():
            key = tuple(row[k] for k in KEY)
            drop = key in seen or (drop_retryable and row["error_class"] is not None and row["retryable"])
            keep.append(not drop)
            if drop:
                continue
            seen.add(key)
            if row["model"] != model or tasks.get(row["task"]) != row["prompt"]:
                continue
            answered.rows += 1
            pair = (row["item_id"], row["task"])
            present[pair].add(row["segment_index"])
            counts[pair] = row["segment_count"]
        if not all(keep):
            answered.pruned += keep.count(False)
            _rewrite(fs, uri, path, keep)
    done: dict[str, set[str]] = defaultdict(set)  # item -> tasks answered in full
    for (item, task), indices in present.items():
        if None in indices or len(indices) == counts[(item, task)]:
            done[item].add(task)
    answered.complete = {item for item, names in done.items() if names >= tasks.keys()}
    answered.partial = {(item, index, task) for (item, task), indices in present.items()
                        if item not in answered.complete for index in indices}
    if answered.pruned:
        logger.info("removed %d superseded rows from %s", answered.pruned, uri)
    return answered


def _rewrite(fs, uri: str, path: str, keep: list[bool]) -> None:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f).filter(keep)
    if table.num_rows:
        _, root = url_to_fs(uri)
        commit_table(fs, root, table, posixpath.relpath(path, root))
    else:
        fs.rm(path)
