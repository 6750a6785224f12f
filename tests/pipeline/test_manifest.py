"""Manifests: JSONL, CSV and Parquet tables naming the audio, with ids, tasks, questions and metadata."""

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from contract.config import load_config
from deployments.app import serving
from pipeline.manifest import read_manifest
from pipeline.run import run
from pipeline.sources import SourceError
from tests.conftest import samples_in

TASKS = ("tasks=[{name: transcribe, question: Please transcribe the audio.}, "
         "{name: summary, question: Summarize the audio.}]")


@pytest.fixture()
def audio_dir(tmp_path):
    return samples_in(tmp_path / "data" / "clips", "greeting.wav", "meeting.mp3", "story.ogg")


def test_jsonl_manifest_through_the_pipeline(whisper_app, audio_dir, tmp_path):
    manifest = tmp_path / "data" / "manifest.jsonl"
    lines = [
        {"audio": "clips/greeting.wav", "id": "call-1", "speaker": "ana", "minutes": 1},  # relative
        {"audio": str(audio_dir / "meeting.mp3"), "task": "summary", "speaker": "bo", "minutes": 2},  # absolute
        {"audio": "clips/story.ogg", "question": "Who is the story about?", "speaker": "cy", "minutes": 3},
        {"audio": "clips/missing.wav", "speaker": "dee"},
        {"audio": None, "speaker": "eve"},
        {"audio": "clips/greeting.wav", "task": "translate", "speaker": "fay"},
    ]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    config = load_config(None, [f"input.manifest={manifest}", f"output.uri={out}", TASKS, *whisper_app])
    summary = run(config, serving)
    rows = pads.dataset(str(out)).to_table().to_pylist()
    by = lambda speaker: [r for r in rows if json.loads(r["metadata"])["speaker"] == speaker]  # noqa: E731

    ana = by("ana")
    assert sorted(r["task"] for r in ana) == ["summary", "transcribe"]
    assert all(r["item_id"] == "call-1" and r["error_class"] is None for r in ana)
    assert json.loads(ana[0]["metadata"]) == {"speaker": "ana", "minutes": 1}
    (bo,) = by("bo")
    assert bo["task"] == "summary" and bo["error_class"] is None
    cy = by("cy")  # its own question, not asked of whisper (as no question is): each task's row, one transcript
    assert len(cy) == 2 and len({r["answer"] for r in cy}) == 1
    assert {r["prompt"] for r in rows} == {"transcribe"}
    (dee,) = [r for r in by("dee") if r["task"] == "transcribe"]
    assert dee["error_class"] == "InvalidURI" and "missing.wav" in dee["error"] and dee["error_stage"] == "read"
    assert {r["error_class"] for r in by("eve")} == {"InvalidURI"} and "missing" in by("eve")[0]["error"]
    (fay,) = by("fay")
    assert fay["error_class"] == "UnknownTask" and "translate" in fay["error"]
    assert summary.files == len(lines) and summary.rows == len(rows) == 2 + 1 + 2 + 2 + 2 + 1

    again = run(config, serving)
    assert again.rows == 0 and again.skipped == len(lines)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_manifests(audio_dir, tmp_path, suffix):
    table = pa.table({"path": ["clips/greeting.wav", "clips/story.ogg"], "lang": ["en", "en"]})
    manifest = tmp_path / "data" / f"m.{suffix}"
    if suffix == "csv":
        manifest.write_text("path,lang\nclips/greeting.wav,en\nclips/story.ogg,en\n")
    else:
        pq.write_table(table, manifest)
    sources = list(read_manifest(str(manifest), "path"))
    assert [s.source_uri for s in sources] == [str(audio_dir / "greeting.wav"), str(audio_dir / "story.ogg")]
    assert [json.loads(s.metadata) for s in sources] == [{"lang": "en"}] * 2
    assert sources[0].item_id != sources[1].item_id and sources[0].size > 0


def test_manifest_without_its_uri_column_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"file": "a.wav"}\n')
    with pytest.raises(SourceError, match="no column 'audio' \\(input.uri_column\\); columns: file"):
        list(read_manifest(str(manifest), "audio"))
