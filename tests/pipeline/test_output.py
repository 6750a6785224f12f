"""The one reader of the output, the resume scan on it, and pruning as its own step, on Parquet files written
here (no Ray): several files, several runs and models, a duplicate key and a retryable error row."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.answered import scan
from pipeline.output import audio_seconds, read_output
from pipeline.prune import prune
from pipeline.rows import OUTPUT_SCHEMA

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(item: str, segment: int | None, *, count: int = 2, task: str = "t", model: str = "m", run: str = "r1",
        error: str | None = None, retryable: bool | None = None, answer: str = "yes") -> dict:
    return {"item_id": item, "source_uri": f"/in/{item}.wav", "segment_index": segment,
            "segment_count": None if segment is None else count, "duration_s": None if segment is None else 10.0,
            "start_s": None if segment is None else 10.0 * segment, "end_s": None if segment is None else 10.0 * segment + 10,
            "task": task, "prompt": "q", "model": model, "answer": None if error else answer, "error_class": error,
            "retryable": retryable, "run_id": run, "created_at": NOW}


def write(folder, name: str, rows: list[dict]) -> None:
    (folder / "run_date=2026-01-01").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), folder / "run_date=2026-01-01" / name,
                   row_group_size=2)


def output(tmp_path):
    write(tmp_path, "a.parquet", [row("whole", 0), row("whole", 1, answer="first"), row("half", 0),
                                  row("other-model", 0, model="m2")])
    write(tmp_path, "b.parquet", [row("whole", 1, answer="second", run="r2"), row("bad", None, error="DecodeError"),
                                  row("slow", 0, count=1, error="RequestTimeout", retryable=True, run="r2")])
    (tmp_path / "_reports").mkdir()
    (tmp_path / "_reports" / "junk.parquet").write_bytes(b"not parquet: readers skip _ folders")
    return str(tmp_path)


def test_reader_pushes_the_filter_down_and_counts_audio_once(tmp_path):
    uri = output(tmp_path)
    r2 = read_output(uri, ["item_id", "segment_index", "duration_s"], pc.field("run_id") == "r2")
    assert sorted(r2["item_id"].to_pylist()) == ["slow", "whole"]
    everything = read_output(uri, ["item_id", "start_s", "end_s"])
    assert everything.num_rows == 7
    assert audio_seconds(everything) == 50.0  # whole 0 and 1 (1 written twice), half 0, other-model 0, slow 0
    assert read_output(str(tmp_path / "nothing"), ["item_id"]).num_rows == 0


def test_scan_reads_and_changes_nothing(tmp_path):
    uri = output(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*.parquet"))
    answered = scan(uri, "m")
    assert answered.rows == 6
    assert answered.complete("whole", [("t", "q")]) and answered.complete("bad", [("t", "q")])
    assert answered.complete("slow", [("t", "q")])  # an error row answers until --retry-failed prunes it
    assert not answered.complete("half", [("t", "q")]) and answered.has("half", 0, None, "t", "q")
    assert not answered.complete("other-model", [("t", "q")])
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*.parquet")) == before


def test_rows_of_a_model_that_answers_no_questions_answer_their_task_whatever_their_prompt(tmp_path):
    # Whisper's rows used to record the task's question; now "transcribe". An output written before is answered.
    answered = scan(output(tmp_path), "m", fixed_prompt="transcribe")
    assert answered.complete("whole", [("t", "transcribe")]) and not answered.complete("whole", [("t", "q")])
    assert answered.has("half", 0, None, "t", "transcribe")
    assert scan(str(tmp_path / "nothing"), "m", fixed_prompt="transcribe").rows == 0


def test_prune_removes_the_second_row_of_a_key_and_on_request_retryable_errors(tmp_path):
    uri = output(tmp_path)
    assert prune(uri) == 1
    rows = pads.dataset(uri).to_table().to_pylist()
    assert [r["answer"] for r in rows if r["item_id"] == "whole" and r["segment_index"] == 1] == ["first"]
    assert prune(uri) == 0
    assert prune(uri, drop_retryable=True) == 1
    rows = pads.dataset(uri).to_table().to_pylist()
    assert len(rows) == 5 and "slow" not in {r["item_id"] for r in rows}
    assert not scan(uri, "m").complete("slow", [("t", "q")])


def test_a_recording_in_parts_is_answered_by_its_answer_row_and_parts_are_not_duplicates(tmp_path):
    def part(index: int | None, run: str = "r1") -> dict:
        return {**row("rec", None, run=run), "scope": "recording", "part": index, "part_count": 2,
                "start_s": 0.0 if index is None else 100.0 * index, "end_s": 200.0 if index is None else 100.0 * index + 100}

    write(tmp_path, "a.parquet", [part(0), part(1)])
    answered = scan(str(tmp_path), "m")
    assert not answered.complete("rec", [("t", "q")])  # the parts are in, the answer is not
    assert answered.has("rec", None, 0, "t", "q") and answered.has("rec", None, 1, "t", "q")
    assert prune(str(tmp_path)) == 0  # two parts are two keys
    write(tmp_path, "b.parquet", [part(None, run="r2"), part(1, run="r2")])
    assert prune(str(tmp_path)) == 1  # part 1 twice: the first stays
    assert scan(str(tmp_path), "m").complete("rec", [("t", "q")])
    assert audio_seconds(read_output(str(tmp_path), ["item_id", "start_s", "end_s"])) == 200.0
