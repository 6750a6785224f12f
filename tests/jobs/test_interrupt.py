"""Ctrl-C or SIGTERM in the middle of a run: the rows answered and not yet in a file (up to
`output.rows_per_file` of them) are committed before the job exits, and its last line counts what is on disk."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from tests.conftest import ROOT, SAMPLES

FILES_DONE = re.compile(r"progress: (\d+)/\d+ files")
STOPPED = re.compile(r"^(interrupted|terminated): run (\S+) wrote (\d+) rows \((\d+) errors\) to (\S+), which stay")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_commits_what_it_answered_and_says_so(tmp_path, signum, code):
    inputs, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "job.log"
    inputs.mkdir()
    for i in range(5):
        for f in SAMPLES.iterdir():
            shutil.copy(f, inputs / f"{i}_{f.name}")
    # Default rows_per_file (256): without the commit on stop, no row of this run would reach the output.
    with log.open("w") as stderr:
        job = subprocess.Popen([sys.executable, "jobs/transcribe.py", "--set", f"input.uri={inputs}",
                                "--set", f"output.uri={out}"], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.time() + 300
    while not any(int(n) >= 8 for n in FILES_DONE.findall(log.read_text())):  # a progress line every 15 s
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    if signum == signal.SIGINT:
        os.killpg(job.pid, signum)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        job.send_signal(signum)  # what a scheduler stopping the job does (`kill PID`, Kubernetes to the driver)
    stdout, _ = job.communicate(timeout=180)
    lines = log.read_text().strip().splitlines()
    assert job.returncode == code, lines[-20:]
    assert " files (" not in stdout  # no summary of a finished run
    assert lines[-1].startswith("ray logs: ")  # Ray's own lines went to that file
    stopped = STOPPED.match(lines[-2])
    assert stopped, lines[-20:]
    how, run_id, rows, errors, where = stopped.groups()
    assert how == ("interrupted" if signum == signal.SIGINT else "terminated") and where == str(out)
    files = [str(f) for f in out.glob("run_date=*/*.parquet")]
    assert files, "nothing committed"
    written = pads.dataset(files).to_table(filter=pc.field("run_id") == run_id)
    # What the driver held is committed; rows still inside the inference actors' last task when the signal came
    # are lost (they reach the driver when the task ends), so the count is what is on disk, not what was answered.
    assert written.num_rows == int(rows) >= 1 and int(errors) == 0
    assert not list(out.glob("_plans/*")) and not list(out.glob("_tmp/*"))
