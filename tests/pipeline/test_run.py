"""The whole pipeline through real Ray Data and a real Serve replica holding the embedded whisper engine."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from contract.config import TaskConfig, load_config
from deployments.app import serving
from pipeline import plan
from pipeline.rows import OUTPUT_SCHEMA
from pipeline.run import run
from tests.conftest import SAMPLES, word_error_rate


@pytest.fixture(scope="module", params=["plan in memory", "plan streamed"])
def finished_run(request, ray_cluster, tmp_path_factory):
    """A run over the samples; twice: with the plan in memory (a small job), and read back from a plan file
    (a job of more than `plan.CHUNK` files; here 3)."""
    inputs = tmp_path_factory.mktemp("in")
    for f in SAMPLES.iterdir():
        shutil.copy(f, inputs / f.name)
    (inputs / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (inputs / "readme.txt").write_text("not audio")
    out = tmp_path_factory.mktemp("out")
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", "deployment.app_name=test-run"])
    # A mix of scopes in one job: the whole recording, and each item alone.
    config.tasks = [TaskConfig(name="transcribe", question="Please transcribe the audio."),
                    TaskConfig(name="again", question="Transcribe it once more.", scope="item")]
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "plan streamed":
            patch.setattr(plan, "CHUNK", 3)
        summary = run(config, serving)
    assert summary.files == 7 > 3  # so "plan streamed" reads a plan file of three chunks
    table = pads.dataset(str(out)).to_table()
    return summary, table.to_pylist(), table.schema, inputs


def test_schema_is_the_documented_one(finished_run):
    _, _, schema, _ = finished_run
    assert schema.remove_metadata() == OUTPUT_SCHEMA


def test_every_file_and_task_has_its_rows_and_nothing_twice(finished_run):
    summary, rows, _, inputs = finished_run
    keys = [(r["source_uri"], r["segment_index"], r["part"], r["task"]) for r in rows]
    assert len(keys) == len(set(keys))
    by_file = {Path(r["source_uri"]).name for r in rows}
    assert by_file == {p.name for p in inputs.iterdir() if p.suffix != ".txt"}
    for name in by_file:
        # Scope recording: one answer row per file (whisper takes a whole recording in one request).
        (whole,) = [r for r in rows if Path(r["source_uri"]).name == name and r["task"] == "transcribe"]
        assert whole["scope"] == "recording" and whole["segment_index"] is None and whole["part"] is None
        if name != "corrupt.wav":
            assert whole["start_s"] == 0 and whole["end_s"] > 0
        for task in ("again",):
            segments = sorted((r for r in rows if Path(r["source_uri"]).name == name and r["task"] == task),
                              key=lambda r: r["segment_index"] or 0)
            assert segments, (name, task)
            if name == "corrupt.wav":
                continue
            assert [r["segment_index"] for r in segments] == list(range(len(segments)))
            assert segments[0]["start_s"] == 0
            for a, b in zip(segments, segments[1:]):
                assert a["end_s"] == b["start_s"]
    assert summary.rows == len(rows)
    assert summary.files == len(by_file)
    assert len({r["run_id"] for r in rows}) == 1 and rows[0]["run_id"] == summary.run_id


def test_corrupt_file_is_one_error_row_per_task(finished_run):
    summary, rows, _, _ = finished_run
    errors = [r for r in rows if r["error_class"]]
    assert sorted(r["task"] for r in errors) == ["again", "transcribe"]
    for r in errors:
        assert Path(r["source_uri"]).name == "corrupt.wav"
        assert r["error_stage"] == "decode" and r["error_class"] == "DecodeError"
        assert "corrupt.wav" in r["error"] and r["retryable"] is False
        assert r["answer"] is None and r["segment_index"] is None
    assert summary.errors == 2


def test_long_file_is_cut_into_items_of_at_most_25_s(finished_run):
    _, rows, _, _ = finished_run
    lecture = [r for r in rows if r["source_uri"].endswith("lecture.wav") and r["task"] == "again"]
    assert len(lecture) >= 2
    assert all(0 < r["duration_s"] <= 30.0 for r in lecture)  # whisper's limit
    assert sum(r["duration_s"] for r in lecture) > 25
    (whole,) = [r for r in rows if r["source_uri"].endswith("lecture.wav") and r["task"] == "transcribe"]
    assert whole["duration_s"] == pytest.approx(sum(r["duration_s"] for r in lecture))
    # Its timestamped segments, in order, within the file, and together its answer.
    segments = whole["segments"]
    assert len(segments) >= 2 and segments[-1]["end"] > 25
    assert all(0 <= a["start"] <= a["end"] <= b["start"] + 1e-6 for a, b in zip(segments, segments[1:]))
    assert " ".join(s["text"] for s in segments) == whole["answer"]


def test_transcripts_match_the_spoken_text(finished_run, transcripts):
    _, rows, _, _ = finished_run
    good = [r for r in rows if not r["error_class"]]
    for r in good:
        assert r["model"] == "whisper-tiny.en" and r["reasoning"] is None and r["finish_reason"] == "stop"
        assert r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 and r["latency_s"] > 0
        assert r["created_at"] is not None and r["prompt"]
    for name, text in transcripts.items():
        for task in ("transcribe", "again"):
            parts = sorted((r for r in good if Path(r["source_uri"]).name == name and r["task"] == task),
                           key=lambda r: r["start_s"])
            assert word_error_rate(text, " ".join(r["answer"] for r in parts)) <= 0.3, name


def test_the_app_started_by_the_job_is_gone(finished_run):
    from ray import serve

    assert "test-run" not in serve.status().applications
