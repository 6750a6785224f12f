"""Which files this run works on: the listing minus what the output already answers.

A plan of more than `CHUNK` files is streamed in chunks to a Parquet file beside the output
(`_plans/<run_id>.plan`, which no reader of the answers picks up), so the driver's memory does not grow with the
number of files, and Ray Data reads it back in parallel. A smaller one stays in memory: Ray Data starts on it at
once, without a read's listing and read tasks (seconds of every small job's start-up).
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import TaskConfig, asks
from contract.formats import ModelFormat
from pipeline.answered import Answered
from pipeline.sources import SourceFile
from pipeline.staging import PLAN_SUFFIX, PLANS
from pipeline.storage import full_uri, open_fs

PLAN_SCHEMA = pa.schema([("item_id", pa.string()), ("source_uri", pa.string()), ("size", pa.int64()),
                         ("version", pa.string()), ("task", pa.string()), ("question", pa.string()),
                         ("metadata", pa.string()), ("error_class", pa.string()), ("error", pa.string()),
                         ("locator", pa.string()),
                         # tasks the output answers already for this item (a task added since): not asked again
                         ("answered_tasks", pa.list_(pa.string()))])
CHUNK = 1_000  # sources held at once: the driver memory bound while planning


@dataclass
class Plan:
    listed: int  # audio files found
    todo: int  # of which this run works on
    table: pa.Table | None = None  # the plan itself, when it is one chunk
    path: str | None = None  # else the plan file, on the output's filesystem


class UnknownTask(Exception):
    """A manifest row names a task the config does not have."""


def _checked(source: SourceFile, tasks: list[TaskConfig],
             fmt: ModelFormat) -> tuple[SourceFile, list[tuple[str, str]]]:
    """The source (an error if it names an unknown task) and the (task, prompt) pairs asked of it: the prompt is
    what the model is asked (`ModelFormat.asked`), as pipeline.pack writes it."""
    chosen = asks(tasks, source.task, source.question)
    if chosen:
        return source, [(t.name, fmt.asked(t.question)) for t in chosen]
    unknown = UnknownTask(f"manifest task {source.task!r} is not one of {', '.join(t.name for t in tasks)}")
    return (replace(source, error_class=type(unknown).__name__, error=str(unknown)),
            [(source.task, fmt.asked(source.question))])


def _planned(sources: list[SourceFile], answered: Answered, tasks: list[TaskConfig], fmt: ModelFormat) -> pa.Table:
    rows = []
    for source, pairs in (_checked(source, tasks, fmt) for source in sources):
        done = answered.answered_tasks(source.item_id, pairs)
        if len(done) < len(pairs):
            rows.append({**source.as_row(), "answered_tasks": done or None})
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


def write_plan(sources: Iterable[SourceFile], answered: Answered, tasks: list[TaskConfig], fmt: ModelFormat,
               output_uri: str, run_id: str, storage: dict | None = None) -> Plan:
    """`sources` less those `answered` in full: in memory if they are one chunk, else streamed to
    `<output>/_plans/<run_id>.plan` (Parquet, named so no reader of the output takes it for answers). `fmt` is the
    model family's format: what its model is asked for each task."""
    sources = iter(sources)
    head = list(itertools.islice(sources, CHUNK + 1))
    if len(head) <= CHUNK:
        table = _planned(head, answered, tasks, fmt)
        return Plan(len(head), table.num_rows, table=table)
    sources = itertools.chain(head, sources)
    del head
    fs, root = open_fs(output_uri, storage)
    path = posixpath.join(root, PLANS, f"{run_id}{PLAN_SUFFIX}")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    listed = todo = 0
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, PLAN_SCHEMA) as writer:
        while chunk := list(itertools.islice(sources, CHUNK)):
            listed += len(chunk)
            table = _planned(chunk, answered, tasks, fmt)
            todo += table.num_rows
            writer.write_table(table)
            del chunk, table  # else the previous chunk stays alive while the next one is listed
    return Plan(listed, todo, path=full_uri(fs, path))


def remove_plan(plan: Plan, storage: dict | None = None) -> None:
    if plan.path:
        fs, path = open_fs(plan.path, storage)
        fs.rm(path)
