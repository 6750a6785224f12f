"""The output as its readers see it: after a killed run (its plan and a staged file left behind), the README's
readers (pyarrow, pandas, DuckDB's glob with hive partitioning) read the answers and nothing else."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.staging import staged_path
from tests.conftest import ROOT, SAMPLES

# The job with a plan of more than 2 files streamed to `_plans/` (as a job of over 1000 files does), writing
# one row per file and one file at a time, so it can be killed with answers written and its plan still there.
STREAMED_PLAN_JOB = ("import sys; import pipeline.plan; pipeline.plan.CHUNK = 2; "
                     "from jobs.transcribe import main; sys.exit(main(sys.argv[1:]))")
ONE_AT_A_TIME = ["output.rows_per_file=1", "resources.files_per_task=1", "resources.batch_size=1",
                 "resources.requests_in_flight=1"]


def test_readers_see_only_answers_after_a_killed_run(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(2):
        for f in SAMPLES.iterdir():
            shutil.copy(f, inputs / f"{i}_{f.name}")
    args = [a for o in [f"input.uri={inputs}", f"output.uri={out}", *ONE_AT_A_TIME] for a in ("--set", o)]
    with (tmp_path / "job.log").open("w") as log:
        job = subprocess.Popen([sys.executable, "-c", STREAMED_PLAN_JOB, *args], cwd=ROOT, start_new_session=True,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while len(glob.glob(f"{out}/run_date=*/*.parquet")) < 2 or not glob.glob(f"{out}/_plans/*"):
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert glob.glob(f"{out}/_plans/*.plan")  # the dead run's plan is still there
    # ... and a file staged by a write killed before its move (the window is too short to hit by killing)
    staged = staged_path(str(out))
    os.makedirs(os.path.dirname(staged), exist_ok=True)
    pq.write_table(pads.dataset(glob.glob(f"{out}/run_date=*/*.parquet")[0]).to_table(), staged)

    answers = pads.dataset(str(out), partitioning="hive").to_table()  # README: pyarrow
    assert answers.num_rows >= 2 and "run_date" in answers.column_names
    assert pc_unique(answers, "item_id") == answers.num_rows  # one task, one item each: no row read twice
    assert len(pd.read_parquet(out)) == answers.num_rows  # README: pandas
    uri = f"{out}/**/*.parquet"
    con = duckdb.connect()
    hive = con.execute(f"SELECT item_id, run_date FROM read_parquet('{uri}', hive_partitioning=true)").fetchall()
    assert sorted(r[0] for r in hive) == sorted(answers["item_id"].to_pylist())  # README: DuckDB
    assert {str(r[1]) for r in hive} == set(answers["run_date"].to_pylist())
    (plain,), = con.execute(f"SELECT count(*) FROM read_parquet('{uri}')").fetchall()
    assert plain == answers.num_rows


def pc_unique(table: pa.Table, column: str) -> int:
    return len(set(table[column].to_pylist()))
