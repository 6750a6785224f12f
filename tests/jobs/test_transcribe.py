"""`jobs/transcribe.py` as a user runs it: its own Ray, the default config, a summary, exit 0."""

import subprocess
import sys

import pyarrow.dataset as pads

from tests.conftest import ROOT, SAMPLES


def test_default_job_runs_the_samples_and_prints_a_summary(tmp_path):
    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--set", f"output.uri={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = len(list(SAMPLES.iterdir()))
    summary = done.stdout.strip().splitlines()[-1]
    assert f"{files} files" in summary and "(0 errors)" in summary and str(tmp_path) in summary
    rows = pads.dataset(str(tmp_path)).to_table()
    assert rows.num_rows >= files
    assert f"{rows.num_rows} rows" in summary


def test_missing_input_is_one_line_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--set", f"input.uri={tmp_path}/nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: input '{tmp_path}/nope' does not exist"]


def test_folder_without_audio_is_an_empty_run(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--set", f"input.uri={tmp_path}",
                           "--set", f"output.uri={tmp_path}/out"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert "0 files (0 already answered), 0.0 s of audio, 0 rows (0 errors)" in done.stdout
    assert "no audio files under" in done.stderr
