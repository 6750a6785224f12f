"""The run report: its figures checked against the Parquet, its plots decoded and looked at, rebuilt from a
local output and from one on S3 (moto's server)."""

import base64
import io
import json
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contract.config import load_config
from deployments.app import serving
from pipeline.report import DATA_COLOR, REPORTS, build, main, write_run_facts
from pipeline.rows import OUTPUT_SCHEMA
from pipeline.run import run
from tests.conftest import samples_in

PRICE = 2.5


@pytest.fixture(scope="module")
def finished(whisper_app, tmp_path_factory):
    inputs, out = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    samples_in(inputs, "greeting.wav", "lecture.wav", "story.ogg", "weather.flac")
    (inputs / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    # The app is reused as it runs (no GPU); the report trusts the config's GPUs per replica for its cost.
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app,
                                "deployment.gpus_per_replica=4", f"report.gpu_hour_price={PRICE}"])
    summary = run(config, serving)
    rows = pads.dataset(str(out)).to_table().to_pylist()
    folder = out / REPORTS / summary.run_id
    return summary, rows, out, json.loads((folder / "report.json").read_text()), (folder / "report.html").read_text()


def images(page: str) -> dict[str, Image.Image]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {title: Image.open(io.BytesIO(base64.b64decode(data))) for title, data in found}


def data_pixels(image: Image.Image) -> int:
    """Pixels drawn in the plots' data colour (what an empty or blank plot lacks)."""
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    color = np.array([int(DATA_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - color).sum(axis=2) < 40).sum())


def test_figures_match_the_parquet(finished):
    summary, rows, _, report, _ = finished
    assert report["run_ids"] == [summary.run_id] and all(r["run_id"] == summary.run_id for r in rows)
    counts = report["counts"]
    errors = [r for r in rows if r["error_class"]]
    asked = [r for r in rows if r["finish_reason"] is not None]
    segments = {(r["item_id"], r["start_s"]): r["duration_s"] for r in rows if r["start_s"] is not None}
    assert counts["rows"] == len(rows) == summary.rows
    assert counts["error_rows"] == len(errors) == summary.errors == 1
    # Scope recording: the lecture's two items are heard in one request, so four pieces of audio for four files.
    assert counts["files"] == 5 and counts["segments"] == len(segments) == 4
    assert counts["requests"] == len(asked) == 4 and counts["finish_reasons"] == {"stop": 4}
    assert report["audio"]["seconds"] == pytest.approx(sum(segments.values())) == pytest.approx(summary.audio_s)
    assert report["wall_s"] == pytest.approx(summary.wall_s) and not report["wall_estimated"]
    assert report["throughput"]["audio_hours_per_hour"] == pytest.approx(summary.audio_s / summary.wall_s)
    assert report["tokens"]["prompt"] == sum(r["prompt_tokens"] for r in asked)
    assert report["tokens"]["completion"] == sum(r["completion_tokens"] for r in asked)
    assert report["tokens"]["reasoning_estimated"] == 0  # whisper does not reason
    latency = np.array([r["latency_s"] for r in asked])
    for p in (50, 90, 95, 99):
        assert report["latency_s"][f"p{p}"] == pytest.approx(np.percentile(latency, p))
    assert report["latency_s"]["max"] == pytest.approx(latency.max())
    answers = np.array([len(r["answer"]) for r in asked])
    assert report["answer_chars"]["p50"] == pytest.approx(np.median(answers))
    assert report["answer_chars"]["count"] == 4 and report["reasoning_chars"]["count"] == 0
    (bad,) = report["errors"]["by_class"]
    assert (bad["stage"], bad["error_class"], bad["count"], bad["retryable"]) == ("decode", "DecodeError", 1, 0)
    assert bad["examples"][0]["source_uri"].endswith("corrupt.wav") and "corrupt.wav" in bad["examples"][0]["error"]


def test_whole_recordings_are_counted(finished):
    _, rows, _, report, page = finished
    recordings = report["recordings"]
    assert recordings["answers"] == 5  # one per file (the corrupt one's is its error row), one task
    assert recordings["requests_per_recording"]["count"] == 4 and recordings["requests_per_recording"]["max"] == 1
    lecture = next(r for r in rows if r["source_uri"].endswith("lecture.wav"))
    assert recordings["audio_s_per_request"]["max"] == pytest.approx(lecture["duration_s"]) and lecture["duration_s"] > 25
    assert recordings["in_parts"] == recordings["parts"] == 0  # whisper takes a whole recording at once
    assert "Whole recordings" in page


def test_cost_is_wall_time_times_running_replicas_times_gpus(finished):
    summary, _, out, report, _ = finished
    facts = json.loads((out / REPORTS / summary.run_id / "run.json").read_text())
    assert 0.5 <= facts["mean_replicas"] <= 1.0  # the one replica, sampled while the run went
    gpu_hours = summary.wall_s * facts["mean_replicas"] * 4 / 3600
    cost = report["cost"]
    assert cost["gpu_hours"] == pytest.approx(gpu_hours)
    assert cost["estimated_cost"] == pytest.approx(gpu_hours * PRICE)
    assert cost["per_audio_hour"] == pytest.approx(gpu_hours * PRICE / (summary.audio_s / 3600))


def test_occupancy_is_the_engines_own_count_sampled_through_the_run(finished):
    summary, rows, out, report, page = finished
    facts = json.loads((out / REPORTS / summary.run_id / "run.json").read_text())
    occupancy, recorded = report["occupancy"], facts["occupancy"]
    assert occupancy["runs_measured"] == 1 and occupancy["replica_s"] == recorded["replica_s"]
    assert occupancy["mean"] == pytest.approx(recorded["mean"])
    assert occupancy["under_90"] == pytest.approx(recorded["under_90"])
    # Whisper's one worker is busy or idle: each sample is 1 or 0, so the time under 90% full is the rest.
    assert 0 < occupancy["mean"] < 1 and occupancy["mean"] + occupancy["under_90"] == pytest.approx(1)
    # The one replica, sampled all through the run: from the whole second the run started in to when it asked
    # (before it counted what it wrote).
    assert summary.wall_s - 2 <= occupancy["replica_s"] <= summary.wall_s + 1
    # Busy time is the engine's own time on the requests, within the 0.5 s grain at each end of each request.
    busy = occupancy["mean"] * occupancy["replica_s"]
    asked = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    grain = 0.5 * (len(asked) + 1)
    assert sum(asked) - grain <= busy <= sum(asked) + grain
    assert "Engine occupancy" in page and "under 90% full" in page


def test_page_is_self_contained_with_plots_of_real_data(finished):
    _, _, out, _, page = finished
    assert "http://" not in page and "https://" not in page and "<script" not in page
    plots = images(page)
    assert set(plots) == {"Audio answered over the run", "Request latency", "Wait for the engine", "Answer length",
                          "Errors"}
    for title, image in plots.items():
        assert image.format == "PNG" and image.size == (640, 320), title
        assert np.asarray(image.convert("L"), dtype=float).std() > 10, title  # not blank
        assert data_pixels(image) > 300, title  # data drawn, not only axes
    assert (out / REPORTS / "latest.html").read_text() == page


def test_rebuilt_from_the_output_it_says_the_same(finished, tmp_path):
    summary, _, out, report, _ = finished
    assert main([str(out), "--run-id", summary.run_id, "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert {**again, "generated_at": None} == {**report, "generated_at": None}
    assert main([str(out)]) == 0  # every run: _reports/all/
    every = json.loads((out / REPORTS / "all" / "report.json").read_text())
    assert every["counts"] == report["counts"] and every["cost"] == report["cost"]
    assert pads.dataset(str(out)).to_table().num_rows == summary.rows  # the reports are not read as data


def test_rebuilt_from_s3(finished, s3, tmp_path):
    summary, _, out, report, _ = finished
    url, client = s3
    client.create_bucket(Bucket="answers")
    for path in out.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="answers", Key=f"out/{path.relative_to(out)}", Body=path.read_bytes())
    assert main(["s3://answers/out", "--run-id", summary.run_id, "--set", f"storage.endpoint_url={url}",
                 "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    for key in ("counts", "audio", "wall_s", "latency_s", "queue_s", "answer_chars", "errors", "cost", "tokens"):
        assert again[key] == report[key], key
    assert len(images((tmp_path / "report.html").read_text())) == 5


def test_reasoning_lengths_and_estimated_tokens_and_a_run_without_facts(tmp_path):
    """Rows as a reasoning model writes them; no run.json, so wall time comes from the rows' timestamps."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        reasoning = "hmm " * int(rng.integers(50, 500))
        truncated = i % 10 == 0
        rows.append({"item_id": f"f{i}", "source_uri": f"/a/{i}.wav", "segment_index": 0, "segment_count": 1,
                     "start_s": 0.0, "end_s": 20.0, "duration_s": 20.0, "task": "t", "prompt": "q", "model": "r1",
                     "reasoning": reasoning, "answer": None if truncated else "yes " * 10,
                     "finish_reason": "length" if truncated else "stop", "truncated": truncated,
                     "prompt_tokens": 300, "completion_tokens": len(reasoning) // 4 + 10, "latency_s": 5.0 + i,
                     "run_id": "r-1", "created_at": start + timedelta(seconds=30 * i)})
    (tmp_path / "run_date=2026-01-01").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), tmp_path / "run_date=2026-01-01" / "p.parquet")
    report, page = build(str(tmp_path), gpu_hour_price=3.0)
    lengths = [len(r["reasoning"]) for r in rows]
    assert report["reasoning_chars"]["count"] == 40
    assert report["reasoning_chars"]["p90"] == pytest.approx(np.percentile(lengths, 90))
    expected = sum(r["completion_tokens"] * (len(r["reasoning"]) / (len(r["reasoning"]) + len(r["answer"])))
                   if r["answer"] else r["completion_tokens"] for r in rows)
    assert report["tokens"]["reasoning_estimated"] == pytest.approx(expected)
    assert report["counts"]["truncated"] == 4 and report["counts"]["finish_reasons"] == {"stop": 36, "length": 4}
    assert report["wall_s"] == 30 * 39 and report["wall_estimated"]
    assert report["cost"]["estimated_cost"] is None and report["cost"]["runs_without_facts"] == 1
    plots = images(page)
    assert "Reasoning length" in plots and data_pixels(plots["Reasoning length"]) > 300
    assert "Errors" not in plots and "No errors." in page
    assert report["occupancy"]["mean"] is None and "Engine occupancy" in page and "Not measured" in page


def test_occupancy_of_several_runs_is_weighted_by_the_replica_time_each_sampled(tmp_path):
    occupancies = {"r-1": {"mean": 1.0, "under_90": 0.0, "replica_s": 30.0},
                   "r-2": {"mean": 0.2, "under_90": 1.0, "replica_s": 10.0}, "r-3": None}  # r-3: openai, unknown
    for run_id, occupancy in occupancies.items():
        write_run_facts(str(tmp_path), {"run_id": run_id, "wall_s": 40.0, "occupancy": occupancy})
    occupancy = build(str(tmp_path))[0]["occupancy"]
    assert occupancy["runs_measured"] == 2 and occupancy["replica_s"] == 40
    assert occupancy["mean"] == pytest.approx(0.8) and occupancy["under_90"] == pytest.approx(0.25)
    assert build(str(tmp_path), ["r-3"])[0]["occupancy"]["mean"] is None


def test_an_output_without_rows_still_renders_from_the_template(tmp_path):
    report, page = build(str(tmp_path / "empty"))
    assert report["counts"]["rows"] == 0 and report["runs"] == [] and report["latency_s"]["count"] == 0
    assert "<h1>0 runs</h1>" in page and "No rows to plot." in page and "No errors." in page
    assert not images(page)


def test_latency_is_the_engines_own_time_and_the_wait_is_apart(finished):
    """Requests of one batch reach the one-worker whisper engine together: all but one wait for its slot, and
    that wait is `queue_s`, not part of `latency_s` (the engine works on one at a time, so its own times add up
    to less than the run)."""
    summary, rows, _, report, page = finished
    asked = [r for r in rows if r["finish_reason"]]
    assert all(r["queue_s"] is not None and r["queue_s"] >= 0 for r in asked)
    assert max(r["queue_s"] for r in asked) > 0
    assert sum(r["latency_s"] for r in asked) < summary.wall_s
    assert report["queue_s"]["count"] == len(asked)
    assert report["queue_s"]["max"] == pytest.approx(max(r["queue_s"] for r in asked))
    assert "Wait for the engine" in images(page)
