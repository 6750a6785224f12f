"""Whisper as a user meets it through the job: it answers no questions and says so once at start, the `prompt`
column records what it was asked, each recording is transcribed once for all the tasks, silence and faint noise
are marked no_speech instead of answered with invented words, and reruns add nothing."""

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import soundfile as sf

from contract.audio import SAMPLE_RATE
from tests.conftest import ROOT, samples_in, word_error_rate

SPEECH = ("greeting.wav", "lecture.wav")  # the lecture is two items: one request holds both
QUIET = ("silence.wav", "faint-noise.wav")
TASKS = ("tasks=[{name: transcribe}, {name: summary, question: Summarize the call in one sentence.}]")


def job(inputs: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [f"input.uri={inputs}", f"output.uri={out}", "report.enabled=false", *overrides]
    command = [sys.executable, "jobs/transcribe.py", "--quiet", *(a for arg in args for a in ("--set", arg))]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows_written(done: subprocess.CompletedProcess) -> int:
    return int(done.stdout.strip().splitlines()[-1].split(" rows (")[0].rsplit(" ", 1)[1])


def test_whisper_transcribes_once_for_every_task_and_marks_silence(tmp_path, transcripts):
    inputs, out = samples_in(tmp_path / "in", *SPEECH), tmp_path / "out"
    n = 10 * SAMPLE_RATE
    sf.write(inputs / "silence.wav", np.zeros(n, np.float32), SAMPLE_RATE)
    sf.write(inputs / "faint-noise.wav", np.random.default_rng(0).standard_normal(n) * 10 ** (-60 / 20), SAMPLE_RATE)

    first = job(inputs, out, TASKS)
    said = [line for line in first.stderr.splitlines() if "answers no questions" in line]
    assert len(said) == 1, first.stderr
    assert "tasks summary are not asked" in said[0] and "prompt column: 'transcribe'" in said[0]
    assert "WARNING" in said[0] and said[0] == first.stderr.splitlines()[0]  # before anything else

    rows = pads.dataset(str(out)).to_table().to_pylist()
    by_file = defaultdict(dict)
    for r in rows:
        by_file[Path(r["source_uri"]).name][r["task"]] = r
    assert rows_written(first) == len(rows) == 2 * 4 and set(by_file) == {*SPEECH, *QUIET}
    assert {r["prompt"] for r in rows} == {"transcribe"} and all(len(t) == 2 for t in by_file.values())
    for name, tasks in by_file.items():
        transcribe, summary = tasks["transcribe"], tasks["summary"]
        # One request answered both: the same answer, the same engine time to the nanosecond.
        same = ("answer", "segments", "latency_s", "queue_s", "finish_reason", "completion_tokens")
        assert {k: transcribe[k] for k in same} == {k: summary[k] for k in same}, name
        assert transcribe["error_class"] is None
        if name in SPEECH:
            assert transcribe["finish_reason"] == "stop"
            assert word_error_rate(transcripts[name], transcribe["answer"]) <= 0.3, transcribe["answer"]
        else:  # marked, not answered with "you" or ". . .", and not an error a retry would redo
            assert (transcribe["answer"], transcribe["finish_reason"]) == ("", "no_speech"), transcribe["answer"]

    # A rerun finds everything answered, also the silent files; so does one that changes the summary's question,
    # which whisper would not be asked either.
    again = job(inputs, out, TASKS)
    assert rows_written(again) == 0 and "4 files (4 already answered)" in again.stdout
    changed = job(inputs, out, TASKS.replace("Summarize the call in one sentence.", "Name the caller."))
    assert rows_written(changed) == 0 and "answers no questions" in changed.stderr
