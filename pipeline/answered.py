"""What the output already holds, so a rerun answers only what is missing: resume and incremental runs.

An item is answered for a task when the output has, for this model and prompt, either one row for each of
its segments or its one item-level error row (the file could not be read or decoded). Scanning also prunes
the output, each file rewritten at once: a second row for the same key (which only a crash between two
steps of an earlier version, or two concurrent runs, could leave) and, on `--retry-failed`, error rows
marked retryable, whose answers this run then makes again.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.staging import commit_table
from pipeline.storage import open_fs

logger = logging.getLogger(__name__)

KEY = ("item_id", "segment_index", "task", "model", "prompt")
COLUMNS = (*KEY, "segment_count", "error_class", "retryable")


def digest(*parts: object) -> bytes:
    """A short stable fingerprint: keeps sets of keys with long prompts small."""
    return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=12).digest()


@dataclass
class Answered:
    """What the output holds for one model: tasks answered in full, and rows of tasks answered in part."""

    done: set[bytes] = field(default_factory=set)  # digest(item, task, prompt)
    partial: set[bytes] = field(default_factory=set)  # digest(item, segment, task, prompt), of unfinished ones
    rows: int = 0  # rows of this model already in the output
    pruned: int = 0  # rows removed from the output by this scan

    def complete(self, item_id: str, asks: Iterable[tuple[str, str]]) -> bool:
        """Whether every (task, prompt) asked of the item is answered in full."""
        return all(digest(item_id, task, prompt) in self.done for task, prompt in asks)

    def has(self, item_id: str, segment_index: int | None, task: str, prompt: str) -> bool:
        return digest(item_id, segment_index, task, prompt) in self.partial


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


def scan(uri: str, model: str, *, drop_retryable: bool = False, storage: dict | None = None) -> Answered:
    """What `uri` answers with `model`; prunes as the module says."""
    fs, root = open_fs(uri, storage)
    answered = Answered()
    seen: set[bytes] = set()
    present: dict[tuple[str, str, str], set[int | None]] = defaultdict(set)  # (item, task, prompt) -> segments
    counts: dict[tuple[str, str, str], int | None] = {}  # (item, task, prompt) -> segments of the item
    for path in output_files(uri, storage):
        with fs.open(path, "rb") as f:
            keys = pq.read_table(f, columns=list(COLUMNS))
        keep = []
        for row in keys.to_pylist():
            key = digest(*(row[k] for k in KEY))
            drop = key in seen or (drop_retryable and row["error_class"] is not None and row["retryable"])
            keep.append(not drop)
            if drop:
                continue
            seen.add(key)
            if row["model"] != model:
                continue
            answered.rows += 1
            ask = (row["item_id"], row["task"], row["prompt"])
            present[ask].add(row["segment_index"])
            counts[ask] = row["segment_count"]
        if not all(keep):
            answered.pruned += keep.count(False)
            _rewrite(fs, root, path, keep)
    for (item, task, prompt), indices in present.items():
        if None in indices or len(indices) == counts[(item, task, prompt)]:
            answered.done.add(digest(item, task, prompt))
        else:
            answered.partial.update(digest(item, index, task, prompt) for index in indices)
    if answered.pruned:
        logger.info("removed %d superseded rows from %s", answered.pruned, uri)
    return answered


def _rewrite(fs, root: str, path: str, keep: list[bool]) -> None:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f).filter(keep)
    if table.num_rows:
        commit_table(fs, root, table, posixpath.relpath(path, root))
    else:
        fs.rm(path)
