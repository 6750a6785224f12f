"""Composes the stages into one lazy Dataset and runs it against the Serve app.

    plan (listing less what is answered) ─► prepare (read, decode, segment, pack into requests; CPU tasks)
        ─► infer (async actors ─► Serve app) ─► Parquet (one file committed per write task)
        ─► combine (recordings answered in parts: one more text-only request each, same infer and sink)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

import pyarrow.compute as pc
import ray

from contract.config import Config, ConfigError
from contract.formats import get_format
from contract.messages import ModelInfo, Occupancy
from pipeline.answered import Answered, scan
from pipeline.combine import combining
from pipeline.infer import answering
from pipeline.lease import LeaseLost, OutputLease
from pipeline.manifest import read_manifest
from pipeline.occupancy import engine_occupancy
from pipeline.output import audio_seconds, read_output
from pipeline.plan import Plan, remove_plan, write_plan
from pipeline.prepare import prepare_batch
from pipeline.progress import Progress
from pipeline.prune import prune
from pipeline.report import report_run, run_facts
from pipeline.shards import FILE_PLAN_ROWS, piece_slices, prepare_samples, shard_samples
from pipeline.sink import OutputWriter
from pipeline.sources import SourceFile, list_audio
from pipeline.staging import PLAN_SUFFIX, remove_leftovers
from pipeline.storage import open_fs
from pipeline.writable import check_writable

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    run_id: str
    files: int  # audio files listed
    skipped: int  # of which already answered in full
    audio_s: float
    rows: int  # rows this run wrote
    errors: int
    wall_s: float
    output_uri: str

    def __str__(self) -> str:
        return (f"run {self.run_id}: {self.files} files ({self.skipped} already answered), "
                f"{self.audio_s:.1f} s of audio, {self.rows} rows ({self.errors} errors) "
                f"in {self.wall_s:.1f} s -> {self.output_uri}")


class Interrupted(Exception):
    """The run was stopped (Ctrl-C: `how` is "interrupted", SIGTERM: "terminated") after committing the rows it
    had answered; `rows` and `errors` are what it wrote, counted on disk."""

    def __init__(self, how: str, run_id: str, rows: int, errors: int, output_uri: str):
        super().__init__(f"{how}: run {run_id} wrote {rows} rows ({errors} errors) to {output_uri}, which stay; "
                         "run the same command again to resume")
        self.how, self.rows, self.errors = how, rows, errors


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def init_ray(config: Config) -> None:
    """Join the cluster named in config or RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=config.ray.num_cpus, include_dashboard=False)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the run as Ctrl-C does (SystemExit(15), its answers committed on the way out). Ray's core
        # worker puts a crash handler over ray.init's own: it dumps a stack and aborts the driver 3 s later.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def unasked_questions(config: Config) -> str | None:
    """The line telling the user that the model answers no questions, when the config's tasks ask it some."""
    fmt = get_format(config.engine.family)
    asking = [t.name for t in config.tasks if t.question]
    if fmt.answers_questions or not asking:
        return None
    return (f"model family {config.engine.family} answers no questions: the questions of tasks {', '.join(asking)} "
            f"are not asked; each item is transcribed once and every task's row holds that transcript "
            f"(prompt column: {fmt.fixed_prompt!r})")


def item_seconds(config: Config, info: ModelInfo) -> float:
    """The item length: the configured one, which may not exceed what the model accepts."""
    if config.segment.max_s is None:
        return info.max_item_s
    if config.segment.max_s > info.max_item_s:
        raise ConfigError(f"segment.max_s: {config.segment.max_s} s is over the {info.max_item_s} s "
                          f"that model family {info.family!r} accepts")
    return config.segment.max_s


def build_dataset(config: Config, plan: Plan, answered: Answered, info: ModelInfo,
                  run_id: str, handle: Any, progress: Any = None) -> ray.data.Dataset:
    r = config.resources
    storage = config.storage.model_dump()
    prepare, batch_size, sharded = prepare_batch, r.files_per_task, {}
    if config.input.format != "files":  # a task takes a piece of a shard (pipeline.shards)
        i = config.input
        prepare, batch_size = prepare_samples, None
        sharded = {"format": i.format, "audio_column": i.audio_column, "id_column": i.id_column,
                   "rows_per_block": r.files_per_task}
    items = plan_dataset(config, plan).map_batches(
        prepare, batch_format="pyarrow", batch_size=batch_size, num_cpus=r.decode_cpus,
        fn_kwargs={"max_item_s": item_seconds(config, info), "search_s": config.segment.search_s,
                   "max_duration_s": config.audio.max_duration_s, "max_size_mb": config.input.max_size_mb,
                   "storage": storage, "tasks": [t.model_dump() for t in config.tasks], "info": info,
                   "handle": handle, **sharded},
    )
    return answering(items, r, handle, [t.model_dump() for t in config.tasks], info.model_name, run_id,
                     skip=answered.partial, progress=progress)


def plan_dataset(config: Config, plan: Plan) -> ray.data.Dataset:
    """The plan in blocks of `files_per_task` rows, so decoding spreads over many tasks."""
    r = config.resources
    sharded = config.input.format != "files"
    if plan.table is not None:
        if sharded:
            return ray.data.from_arrow(list(piece_slices(plan.table)))
        return ray.data.from_arrow([plan.table.slice(i, r.files_per_task)
                                    for i in range(0, plan.todo, r.files_per_task)])
    fs, _ = open_fs(plan.path, config.storage.model_dump())
    files = ray.data.read_parquet(plan.path, filesystem=fs, file_extensions=[PLAN_SUFFIX.lstrip(".")],
                                  num_cpus=r.read_cpus)
    return files.repartition(target_num_rows_per_block=FILE_PLAN_ROWS if sharded else r.files_per_task)


def count_written(output_uri: str, run_id: str, storage: dict) -> tuple[int, int, float]:
    """Rows, error rows and audio seconds this run wrote, counted from the output itself."""
    written = read_output(output_uri, ["item_id", "start_s", "end_s", "error_class"],
                          pc.field("run_id") == run_id, storage)
    errors = pc.count(written["error_class"]).as_py()  # counts the non-null ones
    return written.num_rows, errors, audio_seconds(written)


def sources(config: Config) -> Iterator[SourceFile]:
    """The input's files: the manifest's rows, or the files listed under `input.uri`."""
    i, storage = config.input, config.storage.model_dump()
    if i.format != "files":
        return shard_samples(i, storage, config.resources.files_per_task)
    if i.manifest:
        return read_manifest(i.manifest, i.uri_column, storage=storage)
    return list_audio(i.uri, i.extensions, storage=storage, glob=i.glob, since=i.since_time())


def run(config: Config, app: Callable[[Config], AbstractContextManager[Any]], *, retry_failed: bool = False,
        progress: TextIO | None = None) -> Summary:
    """Answer every listed file not answered yet; `retry_failed` also redoes rows marked retryable.

    `app(config)` opens the Serve app for a `with` and yields its deployment handle (jobs/transcribe.py hands in
    `deployments.app.serving`); it is opened only once the plan has work, after Ray is up.
    `progress`: where to print the progress line (pipeline.progress), e.g. sys.stderr; None: nowhere.
    The run holds the output's lease throughout (pipeline.lease): a second run on the same output stops with
    OutputBusy before any work."""
    run_id = new_run_id()
    o = config.output
    # Before the lease, any listing, Ray or engine: else every answer would be lost at the end.
    check_writable(o.uri, config.storage.model_dump())
    with OutputLease(o.uri, run_id, stale_s=o.lease_stale_s, wait_s=o.lease_wait_s,
                     storage=config.storage.model_dump()) as lease:
        try:
            return _run(config, app, run_id, retry_failed, progress)
        except KeyboardInterrupt:
            if lease.lost:
                raise LeaseLost(f"{lease.lost}; what this run wrote stays") from None
            raise


def _run(config: Config, app: Callable[[Config], AbstractContextManager[Any]], run_id: str, retry_failed: bool,
         progress: TextIO | None) -> Summary:
    start, started_at = time.perf_counter(), datetime.now(timezone.utc)
    tracker, occupancy = None, None
    model, storage, output = config.engine.model_name, config.storage.model_dump(), config.output.uri
    unasked = unasked_questions(config)
    if unasked:
        logger.warning(unasked)
    remove_leftovers(output, storage)  # under this run's lease: what is staged now is a dead run's
    prune(output, drop_retryable=retry_failed, storage=storage)
    fmt = get_format(config.engine.family)
    answered = scan(output, model, storage, fmt.fixed_prompt)
    plan = write_plan(sources(config), answered, config.tasks, fmt, output, run_id, storage)
    writer = OutputWriter(output, run_id, config.output.rows_per_file, storage)
    try:
        if plan.listed == 0:
            logger.warning("no audio files under %s (extensions %s)", config.input.uri, config.input.extensions)
        if plan.todo:
            init_ray(config)
            with app(config) as handle:
                info = handle.info.remote().result()
                with Progress(plan.todo, stream=progress, app_name=handle.app_name,
                              deployment_name=handle.deployment_name) as tracker:
                    dataset = build_dataset(config, plan, answered, info, run_id, handle, tracker.counter)
                    write_output(dataset, writer)
                # Recordings answered in parts get their one answer (pipeline.combine), also a dead run's.
                combined = combining(config, model, run_id, handle)
                if combined is not None:
                    write_output(combined, writer)
                occupancy = engine_occupancy(handle, started_at.timestamp(), time.time())
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C; SIGTERM (Ray's driver handler exits with 15)
        if isinstance(stop, SystemExit) and stop.code != signal.SIGTERM:
            raise
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        raise Interrupted(how, run_id, writer.rows, writer.errors, output) from None
    finally:
        remove_plan(plan, storage)
    rows, errors, audio_s = count_written(output, run_id, storage)
    summary = Summary(run_id, plan.listed, plan.listed - plan.todo, audio_s, rows, errors,
                      time.perf_counter() - start, output)
    if config.report.enabled:
        write_report(config, summary, started_at, tracker, occupancy)
    return summary


def write_output(dataset: ray.data.Dataset, writer: OutputWriter) -> None:
    """Execute `dataset`, committing its rows as they come (pipeline.sink); however it stops, the rows already
    answered are committed before this returns or raises."""
    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            writer.add(block)
    finally:
        writer.flush()


def write_report(config: Config, summary: Summary, started_at: datetime, tracker: Progress | None,
                 occupancy: Occupancy | None) -> None:
    """The run's report beside the output (pipeline.report); one that fails is logged, the rows stand."""
    facts = run_facts(config, run_id=summary.run_id, started_at=started_at, wall_s=summary.wall_s,
                      files_listed=summary.files, files_todo=summary.files - summary.skipped,
                      mean_replicas=tracker.mean_replicas if tracker else None, occupancy=occupancy)
    try:
        logger.info("report: %s", report_run(config.output.uri, facts, config.storage.model_dump()))
    except Exception:  # noqa: BLE001 - the output is complete; the report can be rebuilt (python -m pipeline.report)
        logger.exception("could not write the run report for %s", summary.run_id)
