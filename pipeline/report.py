"""The run report: what a run (or every run) wrote, how fast, how well and at what cost.

`report.json` (figures) and `report.html` (one self-contained page, plots embedded as PNG) go beside the
output, under `_reports/`, which readers of the dataset skip like every `_` folder:

    <output>/_reports/<run_id>/run.json       facts only the driver knows (wall time, plan, replicas, price)
    <output>/_reports/<run_id>/report.json    the figures, all counted from the Parquet rows of that run
    <output>/_reports/<run_id>/report.html
    <output>/_reports/latest.json, latest.html   the newest run's report
    <output>/_reports/all/report.{json,html}  `python -m pipeline.report OUTPUT_URI` without --run-id

A run writes its report when it ends; `python -m pipeline.report OUTPUT_URI [--run-id ID]` rebuilds it from
any output, local or on object storage. A run without `run.json` (an output written before reports existed)
gets its wall time estimated from its rows' timestamps, and no cost.

The figures are computed into one typed summary (`pipeline.figures.Figures`; report.json is its dict) and
the page is rendered from `pipeline/templates/report.html`.

Cost is an estimate: wall time x mean running replicas (sampled during the run) x GPUs per replica x the
configured price per GPU-hour (`report.gpu_hour_price`).

Occupancy is measured, not estimated: each engine's own count of running sequences over its capacity, sampled
on every replica through the run (pipeline.occupancy) and recorded in run.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import posixpath
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contract.messages import Occupancy
from pipeline.figures import Figures, answer_schemas, segments, summarize
from pipeline.metrics import reasoning_tokens
from pipeline.output import read_output
from pipeline.storage import full_uri, open_fs

logger = logging.getLogger(__name__)

REPORTS = "_reports"
TEMPLATES = Path(__file__).parent / "templates"
DATA_COLOR = "#1f77b4"  # every plot draws its data in this colour (tests look for it)
COLUMNS = ["item_id", "source_uri", "segment_index", "start_s", "end_s", "duration_s", "scope", "part",
           "part_count", "task", "model", "reasoning", "answer", "finish_reason", "truncated", "prompt_tokens",
           "completion_tokens", "latency_s", "queue_s", "error", "error_class",
           "error_stage", "retryable", "run_id", "created_at"]


# ---- reading -------------------------------------------------------------------------------------------------

def load_rows(uri: str, run_ids: list[str] | None = None, storage: dict | None = None) -> pa.Table:
    """The output's rows (of `run_ids`, or all), with the texts replaced by their lengths."""
    where = None if run_ids is None else pc.field("run_id").isin(run_ids)
    return _lengths(read_output(uri, COLUMNS, where, storage))


def load_answers(uri: str, run_ids: list[str] | None, schemas: dict[str, dict],
                 storage: dict | None = None) -> pa.Table | None:
    """The answers (task, answer) of the tasks that have an answer schema, for their label tallies."""
    if not schemas:
        return None
    where = pc.field("task").isin(list(schemas)) & pc.field("error_class").is_null()
    if run_ids is not None:
        where &= pc.field("run_id").isin(run_ids)
    return read_output(uri, ["task", "answer"], where, storage)


def _lengths(part: pa.Table) -> pa.Table:
    """Reasoning and answer replaced by their lengths in characters, and the estimated reasoning tokens."""
    estimated = [reasoning_tokens(c, r, a) for c, r, a in zip(
        part["completion_tokens"].to_pylist(), part["reasoning"].to_pylist(), part["answer"].to_pylist())]
    return (part.append_column("reasoning_chars", pc.utf8_length(part["reasoning"]))
            .append_column("answer_chars", pc.utf8_length(part["answer"]))
            .append_column("reasoning_tokens", pa.array(estimated, pa.float64()))
            .drop_columns(["reasoning", "answer"]))


def reports_dir(uri: str, storage: dict | None = None) -> tuple[Any, str]:
    fs, root = open_fs(uri, storage)
    return fs, posixpath.join(root, REPORTS)


def read_run_facts(uri: str, run_ids: list[str] | None = None, storage: dict | None = None) -> dict[str, dict]:
    """run_id -> the facts its driver recorded (`run.json`), for `run_ids` or every run that has them."""
    fs, folder = reports_dir(uri, storage)
    if run_ids is None:
        paths = fs.glob(posixpath.join(folder, "*", "run.json")) if fs.exists(folder) else []
    else:
        paths = [p for p in (posixpath.join(folder, r, "run.json") for r in run_ids) if fs.exists(p)]
    facts = {}
    for path in paths:
        with fs.open(path, "r") as f:
            run = json.load(f)
        facts[run["run_id"]] = run
    return facts


def write_run_facts(uri: str, facts: dict, storage: dict | None = None) -> None:
    fs, folder = reports_dir(uri, storage)
    _write(fs, posixpath.join(folder, facts["run_id"], "run.json"), json.dumps(facts, indent=2))


def _write(fs, path: str, text: str) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


# ---- plots ---------------------------------------------------------------------------------------------------

def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _histogram(values, title: str, xlabel: str) -> bytes:
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(title, xlabel, "rows")
    values = np.asarray(values, dtype=float)
    axes.hist(values, bins=min(40, max(5, int(np.sqrt(values.size)) * 2)), color=DATA_COLOR, edgecolor="white",
              linewidth=0.5)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(figure)


def plots(rows: pa.Table, figures: Figures, facts: dict[str, dict]) -> list[tuple[str, bytes]]:
    """(title, PNG) of every plot that has data to show; a plot with nothing to draw is left out."""
    from matplotlib.ticker import MaxNLocator

    out = []
    cut = segments(rows)
    if len(figures.runs) == 1 and cut.num_rows:
        started = (facts.get(figures.runs[0].run_id) or {}).get("started_at")
        times = cut["created_at_min"].to_pylist()
        start = datetime.fromisoformat(started) if started else min(times)
        order = np.argsort([t.timestamp() for t in times])
        minutes = np.array([(times[i] - start).total_seconds() / 60 for i in order])
        hours = np.cumsum(np.array(cut["duration_s_max"].to_pylist(), dtype=float)[order]) / 3600
        figure, axes = _figure("Audio answered over the run", "minutes since the run started", "audio hours")
        axes.step(np.concatenate([[0.0], minutes]), np.concatenate([[0.0], hours]), where="post",
                  color=DATA_COLOR, linewidth=2.5)
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        out.append(("Audio answered over the run", _png(figure)))
    elif cut.num_rows:
        runs = figures.runs[-30:]
        figure, axes = _figure("Audio hours per run (last 30)", "run", "audio hours")
        axes.bar(range(len(runs)), [r.audio_s / 3600 for r in runs], color=DATA_COLOR)
        axes.set_xticks(range(len(runs)), [r.run_id[:15] for r in runs], rotation=60, fontsize=6)
        out.append(("Audio hours per run", _png(figure)))
    latency = [v for v in rows["latency_s"].to_pylist() if v is not None]
    if latency:
        out.append(("Request latency", _histogram(latency, "Request latency in the engine", "seconds")))
    queued = [v for v in rows["queue_s"].to_pylist() if v is not None]
    if queued:
        out.append(("Wait for the engine", _histogram(queued, "Wait in the replica for an engine slot", "seconds")))
    answers = [v for v in rows["answer_chars"].to_pylist() if v is not None]
    if answers:
        out.append(("Answer length", _histogram(answers, "Answer length", "characters")))
    reasoning = [v for v in rows["reasoning_chars"].to_pylist() if v is not None]
    if reasoning:
        out.append(("Reasoning length", _histogram(reasoning, "Reasoning length", "characters")))
    by_class = figures.errors.by_class
    if by_class:
        figure, axes = _figure("Errors by stage and class", "rows", "")
        labels = [f"{e.stage}: {e.error_class}" for e in by_class[:15]][::-1]
        axes.barh(labels, [e.count for e in by_class[:15]][::-1], color=DATA_COLOR)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        out.append(("Errors", _png(figure)))
    return out


# ---- HTML ----------------------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 2) -> str:
    """A figure as the page shows it: thousands separated, small values to 3 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value and abs(value) < 1:
            return f"{value:.3g}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_html(figures: Figures, images: list[tuple[str, bytes]]) -> str:
    """The page, from `templates/report.html` (autoescaped)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["b64"] = lambda data: base64.b64encode(data).decode()
    return env.get_template("report.html").render(report=figures, images=images)


# ---- building and writing ------------------------------------------------------------------------------------

def build(uri: str, run_ids: list[str] | None = None, *, storage: dict | None = None,
          gpu_hour_price: float | None = None) -> tuple[dict, str]:
    """(report.json's content, report.html) for `run_ids` (default: every run) of the output at `uri`."""
    facts = read_run_facts(uri, run_ids, storage)
    rows = load_rows(uri, run_ids, storage)
    figures = summarize(rows, facts, output_uri=uri, run_ids=run_ids, gpu_hour_price=gpu_hour_price,
                        answers=load_answers(uri, run_ids, answer_schemas(facts), storage))
    return figures.to_dict(), render_html(figures, plots(rows, figures, facts))


def write(uri: str, name: str, report: dict, page: str, *, storage: dict | None = None,
          out: str | None = None) -> str:
    """Write `report.json` and `report.html` to `out` or `<uri>/_reports/<name>/`; returns the HTML's path."""
    if out:
        fs, folder = open_fs(out, storage)
    else:
        fs, folder = reports_dir(uri, storage)
        folder = posixpath.join(folder, name)
    _write(fs, posixpath.join(folder, "report.json"), json.dumps(report, indent=2, default=str))
    path = posixpath.join(folder, "report.html")
    _write(fs, path, page)
    return full_uri(fs, path)


def write_latest(uri: str, report: dict, page: str, storage: dict | None = None) -> None:
    fs, folder = reports_dir(uri, storage)
    _write(fs, posixpath.join(folder, "latest.json"), json.dumps(report, indent=2, default=str))
    _write(fs, posixpath.join(folder, "latest.html"), page)


def run_facts(config, *, run_id: str, started_at: datetime, wall_s: float, files_listed: int, files_todo: int,
              mean_replicas: float | None = None, occupancy: Occupancy | None = None) -> dict[str, Any]:
    """What only the driver knows about a run, for its report (`config` is the run's `Config`); `occupancy` is
    the engines' over the run (pipeline.occupancy), None when unknown."""
    d = config.deployment
    return {
        "run_id": run_id, "started_at": started_at.isoformat(), "wall_s": wall_s,
        "finished_at": datetime.now(timezone.utc).isoformat(), "files_listed": files_listed,
        "files_todo": files_todo, "files_skipped": files_listed - files_todo,
        "input_uri": config.input.uri, "output_uri": config.output.uri, "model": config.engine.model_name,
        "tasks": [t.name for t in config.tasks], "app_name": d.app_name,
        "answers": {t.name: t.answer_schema for t in config.tasks if t.answer is not None},
        "replicas_configured": d.autoscaling.max_replicas if d.autoscaling else d.num_replicas,
        "mean_replicas": mean_replicas, "gpus_per_replica": d.gpus_per_replica,
        "gpu_hour_price": config.report.gpu_hour_price, "currency": config.report.currency,
        "occupancy": asdict(occupancy) if occupancy is not None else None,
    }


def report_run(uri: str, facts: dict, storage: dict | None = None) -> str:
    """At the end of a run: record its facts, build and write its report, and `latest` unless the run had
    nothing to do (a page of zeros would hide the last run that did something); the HTML's path."""
    write_run_facts(uri, facts, storage)
    report, page = build(uri, [facts["run_id"]], storage=storage)
    path = write(uri, facts["run_id"], report, page, storage=storage)
    if facts["files_todo"]:
        write_latest(uri, report, page, storage)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report",
                                     description="Rebuild the run report from an output, local or on object storage.")
    parser.add_argument("output_uri", help="the output dataset (output.uri)")
    parser.add_argument("--run-id", action="append", dest="run_ids", metavar="RUN_ID",
                        help="report this run (repeatable); default: every run in the output")
    parser.add_argument("--out", help="folder to write report.json and report.html to; default: "
                        "<output>/_reports/<run_id>/, or _reports/all/ for every run")
    parser.add_argument("--gpu-hour-price", type=float, help="price per GPU-hour; default: each run's recorded one")
    parser.add_argument("--config", help="config file whose `storage` section opens the output (endpoint, options)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, as for jobs/transcribe.py")
    args = parser.parse_args(argv)
    from contract.config import ConfigError, load_config

    try:
        storage = load_config(args.config, args.overrides).storage.model_dump()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    report, page = build(args.output_uri, args.run_ids, storage=storage, gpu_hour_price=args.gpu_hour_price)
    if not report["counts"]["rows"]:
        print(f"no rows{' of ' + ', '.join(args.run_ids) if args.run_ids else ''} in {args.output_uri}",
              file=sys.stderr)
        return 1
    name = args.run_ids[0] if args.run_ids and len(args.run_ids) == 1 else "all" if not args.run_ids else \
        "selection-" + "-".join(sorted(r[:15] for r in args.run_ids))[:100]
    print(write(args.output_uri, name, report, page, storage=storage, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
