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

Cost is an estimate: wall time x mean running replicas (sampled during the run) x GPUs per replica x the
configured price per GPU-hour (`report.gpu_hour_price`).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import posixpath
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.metrics import reasoning_tokens
from pipeline.output import audio_seconds, read_output
from pipeline.storage import full_uri, open_fs

logger = logging.getLogger(__name__)

REPORTS = "_reports"
DATA_COLOR = "#1f77b4"  # every plot draws its data in this colour (tests look for it)
COLUMNS = ["item_id", "source_uri", "segment_index", "duration_s", "task", "model", "reasoning", "answer",
           "finish_reason", "truncated", "prompt_tokens", "completion_tokens", "latency_s", "error", "error_class",
           "error_stage", "retryable", "run_id", "created_at"]
EXAMPLES = 3  # error examples kept per error class


# ---- reading -------------------------------------------------------------------------------------------------

def load_rows(uri: str, run_ids: list[str] | None = None, storage: dict | None = None) -> pa.Table:
    """The output's rows (of `run_ids`, or all), with the texts replaced by their lengths."""
    where = None if run_ids is None else pc.field("run_id").isin(run_ids)
    return _lengths(read_output(uri, COLUMNS, where, storage))


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


# ---- figures -------------------------------------------------------------------------------------------------

def distribution(values) -> dict[str, Any]:
    """Count, mean and percentiles (numpy's linear interpolation) of the non-null values."""
    array = np.asarray([v for v in values if v is not None], dtype=float)
    if not array.size:
        return {"count": 0, "mean": None, "min": None, "p50": None, "p90": None, "p95": None, "p99": None,
                "max": None}
    p50, p90, p95, p99 = np.percentile(array, [50, 90, 95, 99])
    return {"count": int(array.size), "mean": float(array.mean()), "min": float(array.min()), "p50": float(p50),
            "p90": float(p90), "p95": float(p95), "p99": float(p99), "max": float(array.max())}


def _segments(rows: pa.Table) -> pa.Table:
    """One row per (item, segment) cut from audio: its duration and when its first row was made."""
    cut = rows.filter(pc.is_valid(rows["segment_index"]))
    return cut.group_by(["item_id", "segment_index"]).aggregate([("duration_s", "max"), ("created_at", "min")])


def _run_wall(run_id: str, rows: pa.Table, facts: dict | None) -> tuple[float, bool]:
    """A run's wall time, and whether it is estimated (no run.json: first to last row)."""
    if facts and facts.get("wall_s") is not None:
        return float(facts["wall_s"]), False
    times = rows.filter(pc.equal(rows["run_id"], run_id))["created_at"]
    first, last = pc.min(times).as_py(), pc.max(times).as_py()
    return ((last - first).total_seconds() if first and last else 0.0), True


def _cost(runs: list[dict], price_override: float | None) -> dict[str, Any]:
    gpu_hours, cost, priced, unknown = 0.0, 0.0, 0, 0
    currency = None
    for run in runs:
        if run["gpu_hours"] is None:
            unknown += 1
            continue
        gpu_hours += run["gpu_hours"]
        price = price_override if price_override is not None else run.get("gpu_hour_price")
        if price is not None:
            cost += run["gpu_hours"] * price
            priced += 1
            currency = currency or run.get("currency")
    return {"gpu_hours": gpu_hours, "gpu_hour_price": price_override, "currency": currency or "USD",
            "estimated_cost": cost if priced else None, "runs_priced": priced, "runs_without_facts": unknown,
            "basis": "wall time x mean running replicas x GPUs per replica x price per GPU-hour"}


def summarize(rows: pa.Table, facts: dict[str, dict], *, output_uri: str, run_ids: list[str] | None = None,
              gpu_hour_price: float | None = None) -> dict[str, Any]:
    """The report's figures, from the rows (`load_rows`) and the runs' recorded facts."""
    errors = rows.filter(pc.is_valid(rows["error_class"]))
    asked = rows.filter(pc.is_valid(rows["finish_reason"]))  # rows the model answered or failed
    answered = rows.filter(pc.is_null(rows["error_class"]))
    segments = _segments(rows)
    audio_s = audio_seconds(rows)
    # Every run asked for, or else every run with rows or recorded facts (a run that found nothing new has none)
    runs = []
    for run_id in sorted(set(run_ids) if run_ids is not None else set(rows["run_id"].to_pylist()) | set(facts)):
        own = rows.filter(pc.equal(rows["run_id"], run_id))
        run_facts = facts.get(run_id)
        wall_s, estimated = _run_wall(run_id, rows, run_facts)
        run_audio = audio_seconds(own)
        gpu_hours = None
        if run_facts:
            replicas = run_facts.get("mean_replicas") or run_facts.get("replicas_configured") or 0
            gpu_hours = wall_s * replicas * run_facts.get("gpus_per_replica", 0) / 3600
        recorded = run_facts or {}
        runs.append({
            "run_id": run_id, "started_at": recorded.get("started_at"), "wall_s": wall_s,
            "wall_estimated": estimated, "rows": own.num_rows, "files": len(set(own["item_id"].to_pylist())),
            "error_rows": own.filter(pc.is_valid(own["error_class"])).num_rows, "audio_s": run_audio,
            "audio_hours_per_hour": run_audio / wall_s if wall_s else None, "gpu_hours": gpu_hours,
            "gpu_hour_price": recorded.get("gpu_hour_price"), "currency": recorded.get("currency"),
            "files_listed": recorded.get("files_listed"), "files_skipped": recorded.get("files_skipped"),
        })
    wall_s = sum(r["wall_s"] for r in runs)
    prompt = int(pc.sum(asked["prompt_tokens"]).as_py() or 0)
    completion = int(pc.sum(asked["completion_tokens"]).as_py() or 0)
    reasoning_est = float(pc.sum(asked["reasoning_tokens"]).as_py() or 0.0)
    audio_h = audio_s / 3600
    by_class = []
    for stage, error_class in sorted(set(zip(errors["error_stage"].to_pylist(), errors["error_class"].to_pylist())),
                                     key=lambda key: (key[0] or "", key[1])):
        same_stage = pc.equal(errors["error_stage"], stage) if stage is not None else pc.is_null(errors["error_stage"])
        these = errors.filter(pc.and_(pc.equal(errors["error_class"], error_class), same_stage))
        examples = these.slice(0, EXAMPLES).select(["source_uri", "segment_index", "task", "error"]).to_pylist()
        for example in examples:
            if example["error"] and len(example["error"]) > 500:
                example["error"] = example["error"][:500] + "..."
        by_class.append({"stage": stage, "error_class": error_class, "count": these.num_rows,
                         "retryable": int(pc.sum(pc.cast(these["retryable"], pa.int64())).as_py() or 0),
                         "examples": examples})
    by_class.sort(key=lambda e: -e["count"])
    cost = _cost(runs, gpu_hour_price)
    return {
        "output_uri": output_uri,
        "run_ids": [r["run_id"] for r in runs],
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {
            "rows": rows.num_rows, "answered_rows": answered.num_rows, "error_rows": errors.num_rows,
            "requests": asked.num_rows, "files": len(set(rows["item_id"].to_pylist())),
            "segments": segments.num_rows, "tasks": _tally(rows["task"]), "models": _tally(rows["model"]),
            "finish_reasons": _tally(asked["finish_reason"]),
            "truncated": int(pc.sum(pc.cast(pc.fill_null(asked["truncated"], False), pa.int64())).as_py() or 0),
        },
        "audio": {"seconds": audio_s, "hours": audio_h},
        "wall_s": wall_s,
        "wall_estimated": any(r["wall_estimated"] for r in runs),
        "throughput": {
            "audio_hours_per_hour": audio_s / wall_s if wall_s else None,
            "rows_per_s": rows.num_rows / wall_s if wall_s else None,
            "requests_per_s": asked.num_rows / wall_s if wall_s else None,
            "completion_tokens_per_s": completion / wall_s if wall_s else None,
        },
        "tokens": {
            "prompt": prompt, "completion": completion, "reasoning_estimated": reasoning_est,
            "reasoning_chars": int(pc.sum(asked["reasoning_chars"]).as_py() or 0),
            "completion_per_audio_hour": completion / audio_h if audio_h else None,
            "reasoning_estimated_per_audio_hour": reasoning_est / audio_h if audio_h else None,
            "note": "reasoning tokens are estimated: completion tokens split by the characters of reasoning "
                    "and answer",
        },
        "latency_s": distribution(asked["latency_s"].to_pylist()),
        "reasoning_chars": distribution(answered["reasoning_chars"].to_pylist()),
        "answer_chars": distribution(answered["answer_chars"].to_pylist()),
        "completion_tokens": distribution(answered["completion_tokens"].to_pylist()),
        "errors": {"total": errors.num_rows, "by_class": by_class},
        "cost": {**cost, "per_audio_hour": cost["estimated_cost"] / audio_h
                 if cost["estimated_cost"] is not None and audio_h else None},
        "runs": runs,
    }


def _tally(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null()).to_pylist() if len(column) else []
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}


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


def plots(rows: pa.Table, report: dict, facts: dict[str, dict]) -> list[tuple[str, bytes]]:
    """(title, PNG) of every plot that has data to show; a plot with nothing to draw is left out."""
    from matplotlib.ticker import MaxNLocator

    out = []
    segments = _segments(rows)
    if len(report["runs"]) == 1 and segments.num_rows:
        run = report["runs"][0]
        started = (facts.get(run["run_id"]) or {}).get("started_at")
        times = segments["created_at_min"].to_pylist()
        start = datetime.fromisoformat(started) if started else min(times)
        order = np.argsort([t.timestamp() for t in times])
        minutes = np.array([(times[i] - start).total_seconds() / 60 for i in order])
        hours = np.cumsum(np.array(segments["duration_s_max"].to_pylist(), dtype=float)[order]) / 3600
        figure, axes = _figure("Audio answered over the run", "minutes since the run started", "audio hours")
        axes.step(np.concatenate([[0.0], minutes]), np.concatenate([[0.0], hours]), where="post",
                  color=DATA_COLOR, linewidth=2.5)
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        out.append(("Audio answered over the run", _png(figure)))
    elif segments.num_rows:
        runs = report["runs"][-30:]
        figure, axes = _figure("Audio hours per run (last 30)", "run", "audio hours")
        axes.bar(range(len(runs)), [r["audio_s"] / 3600 for r in runs], color=DATA_COLOR)
        axes.set_xticks(range(len(runs)), [r["run_id"][:15] for r in runs], rotation=60, fontsize=6)
        out.append(("Audio hours per run", _png(figure)))
    latency = [v for v in rows["latency_s"].to_pylist() if v is not None]
    if latency:
        out.append(("Request latency", _histogram(latency, "Request latency in the engine", "seconds")))
    answers = [v for v in rows["answer_chars"].to_pylist() if v is not None]
    if answers:
        out.append(("Answer length", _histogram(answers, "Answer length", "characters")))
    reasoning = [v for v in rows["reasoning_chars"].to_pylist() if v is not None]
    if reasoning:
        out.append(("Reasoning length", _histogram(reasoning, "Reasoning length", "characters")))
    by_class = report["errors"]["by_class"]
    if by_class:
        figure, axes = _figure("Errors by stage and class", "rows", "")
        labels = [f"{e['stage']}: {e['error_class']}" for e in by_class[:15]][::-1]
        axes.barh(labels, [e["count"] for e in by_class[:15]][::-1], color=DATA_COLOR)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        out.append(("Errors", _png(figure)))
    return out


# ---- HTML ----------------------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value and abs(value) < 1:
            return f"{value:.3g}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(header: list[str], body: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{cells}</table>"


def render_html(report: dict, images: list[tuple[str, bytes]]) -> str:
    c, t, tok, cost = report["counts"], report["throughput"], report["tokens"], report["cost"]
    wall = _fmt(report["wall_s"], 1) + (" (estimated from row times)" if report["wall_estimated"] else "")
    overview = _table(["", ""], [
        ["runs", len(report["runs"])], ["files", c["files"]], ["segments", c["segments"]], ["rows", c["rows"]],
        ["answered rows", c["answered_rows"]], ["error rows", c["error_rows"]], ["requests", c["requests"]],
        ["audio hours", report["audio"]["hours"]], ["wall time (s)", wall],
        ["audio hours per hour", t["audio_hours_per_hour"]], ["requests per second", t["requests_per_s"]],
        ["completion tokens per second", t["completion_tokens_per_s"]],
        ["prompt tokens", tok["prompt"]], ["completion tokens", tok["completion"]],
        ["reasoning tokens (estimated)", tok["reasoning_estimated"]],
        ["completion tokens per audio hour", tok["completion_per_audio_hour"]],
        ["reasoning tokens per audio hour (estimated)", tok["reasoning_estimated_per_audio_hour"]],
        ["truncated (reasoning never finished)", c["truncated"]],
    ])
    stats = ["count", "mean", "p50", "p90", "p95", "p99", "max"]
    dists = _table(["", *stats], [
        [name, *[report[key][s] for s in stats]] for name, key in
        [("request latency (s)", "latency_s"), ("reasoning (characters)", "reasoning_chars"),
         ("answer (characters)", "answer_chars"), ("completion tokens", "completion_tokens")]])
    breakdown = _table(["tasks", "rows"], list(c["tasks"].items())) + \
        _table(["finish reason", "requests"], list(c["finish_reasons"].items()))
    errors = "<p>No errors.</p>"
    if report["errors"]["by_class"]:
        errors = _table(["stage", "class", "rows", "retryable", "examples"], [
            [e["stage"], e["error_class"], e["count"], e["retryable"],
             "; ".join(f"{x['source_uri']} [{x['task']}]: {x['error']}" for x in e["examples"])]
            for e in report["errors"]["by_class"]])
    price = cost["gpu_hour_price"] if cost["gpu_hour_price"] is not None else "per run (report.gpu_hour_price)"
    costs = _table(["", ""], [
        ["GPU-hours", cost["gpu_hours"]], ["price per GPU-hour", price],
        [f"estimated cost ({cost['currency']})", cost["estimated_cost"]],
        [f"cost per audio hour ({cost['currency']})", cost["per_audio_hour"]],
        ["runs without recorded facts (not costed)", cost["runs_without_facts"]],
    ]) + f"<p class=note>{html.escape(cost['basis'])}" + \
        ("" if cost["runs_priced"] else "; no price per GPU-hour configured (report.gpu_hour_price), so no cost") + \
        ".</p>"
    runs = _table(["run", "started", "wall s", "files", "rows", "errors", "audio h", "audio h/h", "GPU-hours"], [
        [r["run_id"], r["started_at"], r["wall_s"], r["files"], r["rows"], r["error_rows"], r["audio_s"] / 3600,
         r["audio_hours_per_hour"], r["gpu_hours"]] for r in report["runs"][-200:]])
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"</figure>" for title, png in images)
    title = ("Run " + report["run_ids"][0]) if len(report["run_ids"]) == 1 else f"{len(report['run_ids'])} runs"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Report: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 1em 1em 0; display: inline-table; vertical-align: top; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }}
td {{ font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0.5em; }}
.note {{ color: #666; font-size: 0.85em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class=note>{html.escape(report["output_uri"])} &middot; generated {html.escape(report["generated_at"])}</p>
<h2>Overview</h2>{overview}
<h2>Plots</h2>{figures or "<p>No rows to plot.</p>"}
<h2>Distributions</h2>{dists}{breakdown}
<p class=note>{html.escape(tok["note"])}.</p>
<h2>Errors</h2>{errors}
<h2>Cost</h2>{costs}
<h2>Runs</h2>{runs}
</body></html>
"""


# ---- building and writing ------------------------------------------------------------------------------------

def build(uri: str, run_ids: list[str] | None = None, *, storage: dict | None = None,
          gpu_hour_price: float | None = None) -> tuple[dict, str]:
    """(report.json's content, report.html) for `run_ids` (default: every run) of the output at `uri`."""
    facts = read_run_facts(uri, run_ids, storage)
    rows = load_rows(uri, run_ids, storage)
    report = summarize(rows, facts, output_uri=uri, run_ids=run_ids, gpu_hour_price=gpu_hour_price)
    return report, render_html(report, plots(rows, report, facts))


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
              mean_replicas: float | None = None) -> dict[str, Any]:
    """What only the driver knows about a run, for its report (`config` is the run's `Config`)."""
    d = config.deployment
    return {
        "run_id": run_id, "started_at": started_at.isoformat(), "wall_s": wall_s,
        "finished_at": datetime.now(timezone.utc).isoformat(), "files_listed": files_listed,
        "files_todo": files_todo, "files_skipped": files_listed - files_todo,
        "input_uri": config.input.uri, "output_uri": config.output.uri, "model": config.engine.model_name,
        "tasks": [t.name for t in config.tasks], "app_name": d.app_name,
        "replicas_configured": d.autoscaling.max_replicas if d.autoscaling else d.num_replicas,
        "mean_replicas": mean_replicas, "gpus_per_replica": d.gpus_per_replica,
        "gpu_hour_price": config.report.gpu_hour_price, "currency": config.report.currency,
    }


def report_run(uri: str, facts: dict, storage: dict | None = None) -> str:
    """At the end of a run: record its facts, build and write its report (and `latest`); the HTML's path."""
    write_run_facts(uri, facts, storage)
    report, page = build(uri, [facts["run_id"]], storage=storage)
    path = write(uri, facts["run_id"], report, page, storage=storage)
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
