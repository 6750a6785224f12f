"""One writer per output (pipeline.lease), locally and on a real S3 server (moto's, with conditional writes)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import s3fs

from contract.config import load_config
from deployments.app import serving
from pipeline.lease import LEASE, Holder, LeaseLost, OutputBusy, OutputLease, read_holder
from pipeline.output import read_output
from pipeline.run import run
from tests.conftest import samples_in

KEY = ["item_id", "segment_index", "task", "model", "prompt"]


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """An output location and the storage settings that reach it."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    url, client = request.getfixturevalue("s3")
    name = f"lease-{request.node.name.split('[')[0][-20:].replace('_', '-')}-{time.monotonic_ns() % 10**6}"
    client.create_bucket(Bucket=name)
    return f"s3://{name}/out", {"endpoint_url": url}


def plant(uri: str, storage: dict, holder: Holder) -> None:
    """A lease file as another run would have left it."""
    from pipeline.storage import open_fs

    fs, root = open_fs(uri, storage)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{LEASE}", json.dumps(holder.__dict__).encode())


def ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


def test_second_lease_refused_then_taken_once_given_back(output):
    uri, storage = output
    with OutputLease(uri, "run-a", stale_s=60, storage=storage):
        assert read_holder(uri, storage).run_id == "run-a"
        with pytest.raises(OutputBusy) as busy:
            OutputLease(uri, "run-b", stale_s=60, storage=storage).acquire()
        message = str(busy.value)
        assert "\n" not in message
        assert "in use by run run-a" in message and "since 20" in message and "lease_stale_s=60" in message
    assert read_holder(uri, storage) is None  # given back
    with OutputLease(uri, "run-b", stale_s=60, storage=storage):
        assert read_holder(uri, storage).run_id == "run-b"


def test_heartbeat_renews_and_a_stale_or_dead_lease_is_taken_over(output):
    uri, storage = output
    # Another host's run whose heartbeat stopped 100 s ago: over a 60 s limit it is dead, under 300 s it is not.
    plant(uri, storage, Holder("run-old", "elsewhere", 1, ago(3600), ago(100)))
    with pytest.raises(OutputBusy, match="run-old on elsewhere"):
        OutputLease(uri, "run-new", stale_s=300, storage=storage).acquire()
    with OutputLease(uri, "run-new", stale_s=0.8, storage=storage) as lease:
        first = read_holder(uri, storage).heartbeat_at
        deadline = time.time() + 20
        while read_holder(uri, storage).heartbeat_at == first:  # renewed every 0.2 s, in whole seconds
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.1)
        assert not lease.lost
    # This host, fresh heartbeat, but the process is gone (a SIGKILLed job): taken over at once.
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    plant(uri, storage, Holder("run-killed", socket.gethostname(), dead.pid, ago(5), ago(1)))
    with OutputLease(uri, "run-next", stale_s=300, storage=storage):
        assert read_holder(uri, storage).run_id == "run-next"


def test_racing_takeovers_have_one_winner(output):
    uri, storage = output
    plant(uri, storage, Holder("run-old", "elsewhere", 1, ago(3600), ago(3600)))
    won, refused, go = [], [], threading.Barrier(4)

    def contend(i: int) -> None:
        lease = OutputLease(uri, f"run-{i}", stale_s=60, storage=storage)
        go.wait()
        try:
            lease.acquire()
            won.append(lease)
        except OutputBusy:
            refused.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    assert read_holder(uri, storage).run_id == won[0].run_id
    won[0].release()


def test_a_run_whose_lease_is_taken_stops(output):
    uri, storage = output
    lease = OutputLease(uri, "run-slow", stale_s=0.8, storage=storage)
    with pytest.raises(LeaseLost):
        with lease:
            plant(uri, storage, Holder("run-other", "elsewhere", 1, ago(0), ago(0)))
            try:
                time.sleep(30)  # interrupted by the heartbeat thread
            except KeyboardInterrupt:
                assert lease.lost and "run-other" in lease.lost
                raise LeaseLost(lease.lost) from None
    assert read_holder(uri, storage).run_id == "run-other"  # not deleted by the loser


def test_second_run_on_a_busy_output_stops_before_any_work_and_no_key_is_doubled(output, whisper_app, tmp_path):
    uri, storage = output
    inputs = samples_in(tmp_path / "in", "greeting.wav", "story.ogg", "note.m4a")
    sets = [f"input.uri={inputs}", f"output.uri={uri}", *whisper_app, "output.rows_per_file=1",
            "resources.files_per_task=1", "resources.batch_size=1", "resources.requests_in_flight=1"]
    if storage:
        sets.append(f"storage.endpoint_url={storage['endpoint_url']}")
    config = load_config(None, sets)
    first: dict = {}
    worker = threading.Thread(target=lambda: first.setdefault("summary", run(config, serving)))
    worker.start()
    try:
        deadline = time.time() + 120
        while (holder := read_holder(uri, storage)) is None:
            assert worker.is_alive() and time.time() < deadline
            time.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(OutputBusy, match=re.escape(f"in use by run {holder.run_id} on {holder.host} "
                                                       f"(pid {holder.pid}) since {holder.started_at}")):
            run(config, serving)
        assert time.perf_counter() - started < 10  # before any work: no listing, no Ray Data
    finally:
        worker.join(timeout=300)
    assert first["summary"].rows == 3 and first["summary"].errors == 0
    assert read_holder(uri, storage) is None
    again = run(config, serving)  # the first has ended: this one proceeds, with nothing left to do
    assert (again.rows, again.skipped) == (0, 3)
    keys = read_output(uri, KEY, storage=storage).to_pylist()
    assert len(keys) == 3 and max(Counter(tuple(k.values()) for k in keys).values()) == 1
    if storage:
        fs = s3fs.S3FileSystem(endpoint_url=storage["endpoint_url"], skip_instance_cache=True)
        assert not [f for f in fs.find(uri) if "/_tmp/" in f or f.endswith(LEASE)]
