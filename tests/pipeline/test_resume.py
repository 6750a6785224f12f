"""Nothing lost, nothing twice: reruns, kills, dead replicas and retries, then rows counted one by one."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads

from contract.config import load_config
from deployments.app import serving
from pipeline.run import run
from tests.conftest import ROOT, SAMPLES

KEY = ("item_id", "segment_index", "part", "task", "model", "prompt")


def copy_samples(folder: Path, copies: int = 1, names=None) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        for f in SAMPLES.iterdir():
            if names is None or f.name in names:
                shutil.copy(f, folder / f"{i}_{f.name}")
    return len(list(folder.iterdir()))


def rows(out: Path) -> list[dict]:
    return pads.dataset(str(out)).to_table().to_pylist() if glob.glob(f"{out}/*/*.parquet") else []


def assert_one_outcome_per_key(out: Path, inputs: Path) -> list[dict]:
    """Every input file has its rows (for each task one answer, or one per segment for scope item), and no key
    appears twice."""
    written = rows(out)
    counts = Counter(tuple(r[k] for k in KEY) for r in written)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    by_file = {Path(r["source_uri"]).name for r in written}
    assert by_file == {p.name for p in inputs.iterdir()}
    for r in written:
        if r["segment_index"] is not None:
            segments = {(x["segment_index"]) for x in written
                        if x["item_id"] == r["item_id"] and x["task"] == r["task"]}
            assert segments == set(range(r["segment_count"]))
    answers = Counter((r["item_id"], r["task"]) for r in written if r["segment_index"] is None and r["part"] is None)
    assert set(answers.values()) == {1}
    return written


def test_rerun_adds_nothing_and_new_files_add_exactly_their_rows(whisper_app, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    copy_samples(inputs, names={"greeting.wav", "story.ogg", "lecture.wav"})
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app])
    first = run(config, serving)
    assert first.rows == 3 and first.skipped == 0  # one answer per recording (the lecture's two items together)

    second = run(config, serving)
    assert (second.rows, second.skipped, second.files) == (0, 3, 3)
    assert len(rows(out)) == 3

    copy_samples(inputs, names={"note.m4a", "weather.flac"})
    (inputs / "0_note.m4a").rename(inputs / "new note.m4a")
    third = run(config, serving)
    assert (third.rows, third.skipped) == (2, 3)
    written = assert_one_outcome_per_key(out, inputs)
    assert {Path(r["source_uri"]).name for r in written if r["run_id"] == third.run_id} == \
        {"new note.m4a", "0_weather.flac"}


def test_a_new_task_is_answered_alone_and_old_rows_stay(whisper_app, tmp_path):
    """Only the new task's rows are made (the old task's are not asked again beside them); a question, new or
    changed, is not what whisper is asked (its prompt is "transcribe"), so it changes nothing answered."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    copy_samples(inputs, names={"greeting.wav", "story.ogg"})
    first = run(load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app]), serving)
    added = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app,
                               "tasks=[{name: transcribe, question: Write down what is said.}, {name: summary}]"])
    second = run(added, serving)
    assert (second.rows, second.skipped) == (2, 0)
    written = assert_one_outcome_per_key(out, inputs)
    assert Counter((r["task"], r["run_id"]) for r in written) == {("transcribe", first.run_id): 2,
                                                                  ("summary", second.run_id): 2}
    assert {r["prompt"] for r in written} == {"transcribe"}
    assert run(added, serving).rows == 0


def test_retry_failed_replaces_retryable_rows(ray_cluster, whisper_app, tmp_path):
    from ray import serve

    from deployments.app import application

    inputs, out = tmp_path / "in", tmp_path / "out"
    copy_samples(inputs, names={"greeting.wav", "meeting.mp3"})
    (inputs / "bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    impatient = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", "deployment.app_name=test-impatient",
                                   "deployment.request_timeout_s=0.001", "deployment.reuse_running=true"])
    serve.run(application(impatient), name="test-impatient", route_prefix=None)
    try:
        run(impatient, serving)
    finally:
        serve.delete("test-impatient")
    timed_out = [r for r in rows(out) if r["error_class"] == "RequestTimeout"]
    assert len(timed_out) == 2 and all(r["retryable"] for r in timed_out)

    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app])
    assert run(config, serving).rows == 0  # a plain rerun leaves error rows alone
    retried = run(config, serving, retry_failed=True)
    assert retried.rows == 2 and retried.errors == 0
    written = assert_one_outcome_per_key(out, inputs)
    assert not [r for r in written if r["error_class"] == "RequestTimeout"]
    bad = [r for r in written if r["source_uri"].endswith("bad.wav")]
    assert len(bad) == 1 and bad[0]["error_stage"] == "decode" and bad[0]["run_id"] != retried.run_id


def test_killed_replica_costs_no_rows(whisper_app, tmp_path):
    import ray

    inputs, out = tmp_path / "in", tmp_path / "out"
    copy_samples(inputs, copies=3)
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", "output.rows_per_file=1", *whisper_app])
    killed = []

    def kill_replica_once_rows_appear():
        deadline = time.time() + 120
        while time.time() < deadline and not glob.glob(f"{out}/*/*.parquet"):
            time.sleep(0.2)
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if whisper_app[0].split("=")[1] in actor["name"] and "EngineServer" in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
                killed.append(actor["name"])

    killer = threading.Thread(target=kill_replica_once_rows_appear)
    killer.start()
    summary = run(config, serving)
    killer.join()
    assert killed, "no replica was killed"
    written = assert_one_outcome_per_key(out, inputs)
    assert summary.errors == 0 and len(written) == summary.rows


def run_job(inputs: Path, out: Path, log: Path) -> subprocess.Popen:
    """The job, one row at a time (one file per call, one call in flight, one row per Parquet file): rows appear
    one by one, so the test can stop it with work done and work left."""
    one_at_a_time = ["output.rows_per_file=1", "resources.files_per_task=1", "resources.batch_size=1",
                     "resources.requests_in_flight=1"]
    args = [f"input.uri={inputs}", f"output.uri={out}", *one_at_a_time]
    return subprocess.Popen([sys.executable, "jobs/transcribe.py", *(a for arg in args for a in ("--set", arg))],
                            cwd=ROOT, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_files(out: Path, count: int, job: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(glob.glob(f"{out}/*/*.parquet")) < count:
        assert job.poll() is None, "the job ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.2)


def test_ctrl_c_then_sigkill_then_rerun_completes_without_redoing_work(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    copy_samples(inputs, copies=2)

    job = run_job(inputs, out, tmp_path / "1.log")
    wait_for_files(out, 2, job)
    os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert job.wait(timeout=120) == 130
    assert "run the same command again to resume" in (tmp_path / "1.log").read_text()
    after_interrupt = rows(out)

    job = run_job(inputs, out, tmp_path / "2.log")
    wait_for_files(out, len(glob.glob(f"{out}/*/*.parquet")) + 2, job)
    os.killpg(job.pid, signal.SIGKILL)  # the machine running the job dies
    job.wait(timeout=60)
    after_kill = rows(out)
    assert len(after_kill) > len(after_interrupt)

    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--set", f"input.uri={inputs}", "--set",
                           f"output.uri={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    written = assert_one_outcome_per_key(out, inputs)
    earlier = {tuple(r[k] for k in KEY) for r in after_kill}
    assert earlier <= {tuple(r[k] for k in KEY) for r in written}
    assert len(written) - len(after_kill) == int(done.stdout.split(" rows (")[0].rsplit(" ", 1)[1])
    assert not glob.glob(f"{out}/_tmp/*") and not glob.glob(f"{out}/_plans/*")
