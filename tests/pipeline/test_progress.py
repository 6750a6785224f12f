"""Progress while a run goes: counted from what the inference stage produced, printed in place on a terminal
and as log lines elsewhere, ending with a final line that agrees with the Parquet; `--quiet` silences it."""

import io
import re
import shutil
import time

import pyarrow.dataset as pads
import pytest

import pipeline.progress
from jobs.transcribe import main
from pipeline.progress import Progress, ProgressCounter, Snapshot, report
from tests.conftest import SAMPLES, samples_in

FINAL = re.compile(r"progress: done: (\d+)/(\d+) files \(100%\), (\d+) errors(?: \(([^)]*)\))?, ([\d.]+) audio h, "
                   r"([\d.]+) audio h/h, (\d+) of (\d+) known requests, (\d+) rows in [\d:]+$")


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_is_done_when_all_its_requests_are_and_repeats_count_once():
    # (item_id, request index, requests of the file, file seconds, rows written, {error stage: rows})
    counter = ProgressCounter()
    counter.add([("a", 0, 2, 40.0, 1, {}), ("b", 0, 1, 5.0, 1, {"infer": 1})])
    assert counter.counts() == {"files_done": 1, "requests_known": 3, "requests_done": 2, "rows": 2,
                                "audio_s": 5.0, "errors": {"infer": 1}}
    counter.add([("a", 0, 2, 40.0, 1, {}), ("bad", 0, 1, 0.0, 1, {"decode": 1})])  # a's request 0 again
    assert counter.counts()["files_done"] == 2 and counter.counts()["rows"] == 3
    counter.add([("a", 1, 2, 40.0, 1, {})])
    assert counter.counts() == {"files_done": 3, "requests_known": 4, "requests_done": 4, "rows": 4,
                                "audio_s": 45.0, "errors": {"infer": 1, "decode": 1}}
    assert counter.open == {}  # nothing kept for finished files


def test_a_report_says_what_became_of_one_request_row():
    assert report("a", 0, 3, 61.5, [{"item_id": "a", "error_stage": None}]) == ("a", 0, 3, 61.5, 1, {})
    assert report("a", 1, 3, 61.5, [{"error_stage": "infer"}]) == ("a", 1, 3, 61.5, 1, {"infer": 1})
    assert report("a", 2, 3, 61.5, []) == ("a", 2, 3, 61.5, 0, {})  # skipped: the output had it
    assert report("bad", 0, 1, None, [{"error_stage": "decode"}]) == ("bad", 0, 1, 0.0, 1, {"decode": 1})
    # One request answering two tasks (whisper, every task of the scope): a row each.
    assert report("a", 0, 1, 5.0, [{"error_stage": None}, {"error_stage": None}]) == ("a", 0, 1, 5.0, 2, {})

def test_speed_and_eta_come_from_what_is_done():
    snap = Snapshot(files_todo=10, elapsed_s=600, files_done=4, requests_known=9, requests_done=8, rows=8,
                    audio_s=1800.0, errors={"decode": 1})
    assert snap.audio_hours_per_hour == 3.0 and snap.eta_s == 900
    assert snap.line() == ("progress: 4/10 files (40%), ETA 15:00, 1 errors (decode 1), 0.500 audio h, 3.0 audio h/h, "
                           "8 of 9 known requests, elapsed 10:00")
    assert snap.line(final="stopped") == ("progress: stopped: 4/10 files (40%), 1 errors (decode 1), 0.500 audio h, "
                                          "3.0 audio h/h, 8 of 9 known requests, 8 rows answered in 10:00")
    assert Snapshot(files_todo=10, elapsed_s=5).eta_s is None


def test_terminal_line_is_rewritten_in_place_and_ends_with_a_final_line(ray_cluster):
    stream = Terminal()
    with Progress(3, stream=stream, interval_s=0.2) as progress:
        for i, name in enumerate("abc"):
            progress.counter.add.remote([(name, 0, 1, 3600.0, 1, {})])
            wait_for(lambda: f"{i + 1}/3 files" in stream.getvalue())  # the actor's counts, printed
    text = stream.getvalue()
    updates = text.split("\r\x1b[K")
    assert len(updates) >= 4 and all("\n" not in u for u in updates[1:-1])
    assert updates[-1].startswith("progress: done: 3/3 files (100%), 0 errors, 3.000 audio h")
    assert "3 of 3 known requests, 3 rows in" in updates[-1]
    assert updates[-1].endswith("\n")


def test_log_lines_elsewhere_and_a_stopped_line_when_the_run_fails(ray_cluster):
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(2, stream=stream, interval_s=0.2) as progress:
        progress.counter.add.remote([("a", 0, 1, 60.0, 1, {})])
        wait_for(lambda: stream.getvalue().count("progress: 1/2 files") >= 2)
        raise KeyboardInterrupt
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) >= 3
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d progress: ", line) for line in lines)
    assert "progress: stopped: 1/2 files (50%)" in lines[-1]


def test_the_job_shows_progress_that_matches_the_output_and_quiet_hides_it(whisper_app, tmp_path, capfd,
                                                                         monkeypatch):
    monkeypatch.setattr(pipeline.progress, "LOG_INTERVAL_S", 2.0)
    inputs, out = tmp_path / "in", tmp_path / "out"
    samples_in(inputs, "greeting.wav", "lecture.wav", "story.ogg")
    (inputs / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    where = ["--set", f"input.uri={inputs}", "--set", f"output.uri={out}", "--set", whisper_app[0],
             "--set", whisper_app[1]]
    assert main(where) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if " progress: " in line]
    assert len(lines) >= 2 and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d progress: ", x) for x in lines)
    final = FINAL.search(lines[-1])
    assert final, lines[-1]
    files, todo, errors, by_stage, hours, _, requests, known, rows = final.groups()
    table = pads.dataset(str(out)).to_table().to_pylist()
    heard = {r["item_id"]: r["duration_s"] for r in table if r["segment_index"] is None and r["start_s"] is not None}
    assert (int(files), int(todo)) == (4, 4)
    # Scope recording: one request per file (the lecture's two items go together), the broken file's error too.
    assert int(requests) == int(known) == len(table) == 4 and len(heard) == 3
    assert int(rows) == len(table)
    assert float(hours) == pytest.approx(sum(heard.values()) / 3600, abs=0.0005)
    assert int(errors) == 1 and by_stage == "decode 1"

    shutil.copy(SAMPLES / "note.m4a", inputs / "note.m4a")
    assert main([*where, "--quiet"]) == 0
    assert " progress: " not in capfd.readouterr().err
    assert len(pads.dataset(str(out)).to_table()) == len(table) + 1  # the quiet run did run
