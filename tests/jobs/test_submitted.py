"""The job as a cluster runs it: `ray start --head` on loopback (free ports, a private temp dir), `ray job submit`,
`ray job stop`. An app the stopped job started deletes itself within `deployment.owner_check_s`; a resubmitted
job answers every key exactly once; a job whose engine cannot start fails with the engine's reason.

The head is started with `--block` in a session of its own and ended by its pid (then its process group), so
nothing else on the machine is touched: no `ray stop`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.pipeline.test_resume import assert_one_outcome_per_key, copy_samples, rows

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
APP = "submitted-test"
OWNER_CHECK_S = 2


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster of its own: its dashboard address (for `ray job` and `serve status`)."""
    temp = tempfile.mkdtemp(prefix="r15-", dir="/tmp")  # short: Ray's socket paths live below it
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                             "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
                                             "object-manager-port")}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items())]
    log = open(Path(temp) / "head.out", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 180
        while cli(RAY, "job", "list", "--address", address, check=False).returncode != 0:
            assert proc.poll() is None, (Path(temp) / "head.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's dashboard did not come up"
            time.sleep(1)
        # Serve without HTTP proxies: the job calls its app through a handle, and port 8000 is not ours.
        for attempt in range(3):  # its GCS connection can time out on a loaded machine
            started = cli(SERVE, "start", "--address", f"127.0.0.1:{ports['port']}", "--proxy-location",
                          "Disabled", env=env, check=attempt == 2)
            if started.returncode == 0:
                break
        yield {"address": address, "env": env, "temp": temp}
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` ends the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of this cluster, and only of it
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, f"{shlex.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def entrypoint(*sets: str) -> list[str]:
    """The job's command, as words after `ray job submit --` (which joins them with spaces: none may hold one)."""
    words = [sys.executable, str(ROOT / "jobs" / "transcribe.py"), "--quiet", *(a for s in sets for a in ("--set", s))]
    assert not any(" " in w for w in words), words
    return words


def apps(head) -> dict:
    done = cli(SERVE, "status", "--address", head["address"], env=head["env"])
    return (yaml.safe_load(done.stdout) or {}).get("applications") or {}


def test_stopped_job_leaves_no_app_and_a_resubmitted_job_answers_every_key_once(head, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    files = copy_samples(inputs, copies=2)  # one at a time: stopped well before the end
    sets = [f"input.uri={inputs}", f"output.uri={out}", f"deployment.app_name={APP}",
            f"deployment.owner_check_s={OWNER_CHECK_S}", "output.lease_stale_s=10",
            # One row per file, one file per call, one call at a time: rows appear one by one.
            "output.rows_per_file=1", "resources.files_per_task=1", "resources.batch_size=1",
            "resources.requests_in_flight=1"]
    job = "stopped-1"
    cli(RAY, "job", "submit", "--address", head["address"], "--submission-id", job, "--no-wait", "--",
        *entrypoint(*sets), env=head["env"])
    deadline = time.monotonic() + 300
    while not rows(out):  # the first committed row: the app runs and the job is mid-way
        assert time.monotonic() < deadline, cli(RAY, "job", "logs", "--address", head["address"], job,
                                                env=head["env"]).stdout[-3000:]
        time.sleep(0.2)
    cli(RAY, "job", "stop", "--address", head["address"], job, env=head["env"])
    stopped = time.monotonic()
    status = cli(RAY, "job", "status", "--address", head["address"], job, env=head["env"]).stdout
    assert "was stopped" in status, status
    written_before = len(rows(out))
    assert written_before < files  # stopped mid-run, with the app it started left behind by the driver
    # Noticed within owner_check_s (plus the driver's end reaching the GCS and this CLI's own seconds), then
    # deleted within Serve's graceful shutdown of the replica (20 s by default).
    noticed = None
    while (app := apps(head).get(APP)) is not None:
        if noticed is None and app["status"] == "DELETING":
            noticed = time.monotonic() - stopped
        assert time.monotonic() - stopped < OWNER_CHECK_S + 90, f"app still there: {app}"
        time.sleep(0.5)
    gone = time.monotonic() - stopped
    print(f"app deleting after {noticed} s, gone {gone:.1f} s after `ray job stop` (owner_check_s={OWNER_CHECK_S})")

    done = cli(RAY, "job", "submit", "--address", head["address"], "--submission-id", "resumed-1", "--",
               *entrypoint(*sets[:5]), env=head["env"])  # at the default pace
    assert "Job 'resumed-1' succeeded" in done.stdout, done.stdout[-3000:]
    assert_one_outcome_per_key(out, inputs)
    assert APP not in apps(head)  # ended normally: deleted on the way out


def test_submitted_job_whose_engine_cannot_start_fails_with_the_reason(head, tmp_path):
    inputs = tmp_path / "in"
    copy_samples(inputs, names={"greeting.wav"})
    sets = [f"input.uri={inputs}", f"output.uri={tmp_path / 'out'}", "deployment.app_name=submitted-no-model",
            "engine.engine_kwargs.model=/no/such/model", "deployment.start_timeout_s=240"]
    started = time.monotonic()
    done = cli(RAY, "job", "submit", "--address", head["address"], "--submission-id", "no-model-1", "--",
               *entrypoint(*sets), env=head["env"], check=False)
    assert time.monotonic() - started < 300
    assert done.returncode != 0
    logs = cli(RAY, "job", "logs", "--address", head["address"], "no-model-1", env=head["env"]).stdout
    errors = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert errors and "'submitted-no-model' failed to start: " in errors[-1] and "/no/such/model" in errors[-1], \
        logs[-3000:]
    status = cli(RAY, "job", "status", "--address", head["address"], "no-model-1", env=head["env"]).stdout
    assert "Job 'no-model-1' failed" in status and "exit code 1" in status, status
    assert "submitted-no-model" not in apps(head)
