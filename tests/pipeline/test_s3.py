"""Object storage for real: moto's S3 server on loopback, reached through s3fs by the pipeline's own code."""

import os
import socket
import struct
import subprocess
import sys
import threading

import pyarrow.dataset as pads
import s3fs

from contract.config import load_config
from deployments.app import serving
from pipeline.prepare import prepare_file
from pipeline.run import run
from pipeline.sources import list_audio
from tests.conftest import ROOT, SAMPLES

SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]


def bucket(client, name: str) -> str:
    client.create_bucket(Bucket=name)
    return name


def upload_samples(client, name: str, prefix: str, files) -> None:
    for f in files:
        client.put_object(Bucket=name, Key=f"{prefix}{f.name}", Body=f.read_bytes())


def s3_rows(url: str, uri: str) -> list[dict]:
    fs = s3fs.S3FileSystem(endpoint_url=url, skip_instance_cache=True)
    files = [f for f in fs.find(uri) if "/_" not in f]
    return pads.dataset(files, filesystem=fs).to_table().to_pylist() if files else []


def job(url: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": url}
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([sys.executable, "jobs/transcribe.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_s3_in_s3_out_with_aws_endpoint_url_and_incremental_reruns(s3):
    url, client = s3
    name = bucket(client, "calls")
    first, later = sorted(SAMPLES.iterdir())[:3], sorted(SAMPLES.iterdir())[3:5]
    upload_samples(client, name, "in/2026/", first)
    where = [f"input.uri=s3://{name}/in/", f"output.uri=s3://{name}/out/"]

    runs = [job(url, *where)]
    runs.append(job(url, *where))
    upload_samples(client, name, "in/2026/", later)
    runs.append(job(url, *where))
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr
    rows = s3_rows(url, f"{name}/out/")
    counts = [int(d.stdout.strip().splitlines()[-1].split(" rows (")[0].rsplit(" ", 1)[1]) for d in runs]
    assert counts[1] == 0
    assert counts[0] + counts[2] == len(rows)
    keys = [(r["item_id"], r["segment_index"], r["task"]) for r in rows]
    assert len(keys) == len(set(keys))
    third = {r["source_uri"] for r in rows if r["run_id"] == runs[2].stdout.split()[1].rstrip(":")}
    assert third == {f"s3://{name}/in/2026/{f.name}" for f in later}
    assert not any(r["error_class"] for r in rows)
    assert all(SECRET not in str(v) for r in rows for v in r.values())


def test_in_process_run_with_endpoint_in_config_and_partitioned_output(s3, whisper_app):
    url, client = s3
    name = bucket(client, "inproc")
    upload_samples(client, name, "a/", [SAMPLES / "greeting.wav", SAMPLES / "story.ogg"])
    client.put_object(Bucket=name, Key="a/notes.txt", Body=b"ignored")
    config = load_config(None, [f"input.uri=s3://{name}/a", f"output.uri=s3://{name}/out",
                                f"storage.endpoint_url={url}", *whisper_app])
    summary = run(config, serving)
    assert (summary.files, summary.rows, summary.errors) == (2, 2, 0)
    fs = s3fs.S3FileSystem(endpoint_url=url, skip_instance_cache=True)
    assert all("/run_date=" in f for f in fs.find(f"{name}/out") if "/_" not in f)
    table = pads.dataset(f"{name}/out", filesystem=fs, partitioning="hive").to_table()
    assert table.num_rows == 2 and "run_date" in table.column_names


def test_listing_10k_objects_streams_them_all(s3):
    url, client = s3
    name = bucket(client, "many")
    # Filled through the server's own backend (10k HTTP PUTs would take minutes); listed over HTTP.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in [f"day={i % 7}/clip-{i:05d}.WAV" for i in range(10_000)] + ["readme.md"]:
        backend.put_object(name, key, b"x")
    storage = {"endpoint_url": url}
    listed = list(list_audio(f"s3://{name}", ["wav"], storage=storage))
    assert len(listed) == 10_000 and len({f.item_id for f in listed}) == 10_000
    assert listed[0].source_uri.startswith(f"s3://{name}/day=")
    assert len(list(list_audio(f"s3://{name}/", ["wav"], storage=storage, glob="day=3/*"))) == 1429
    assert list(list_audio(f"s3://{name}", ["wav"], storage=storage, since=__import__("datetime").datetime(
        2999, 1, 1, tzinfo=__import__("datetime").timezone.utc))) == []


OPTIONS = {"max_item_s": 30.0, "search_s": 5.0, "max_duration_s": 600.0}


def test_object_deleted_between_listing_and_reading_is_an_error_row(s3):
    url, client = s3
    name = bucket(client, "vanishing")
    upload_samples(client, name, "", [SAMPLES / "greeting.wav"])
    storage = {"endpoint_url": url}
    (source,) = list_audio(f"s3://{name}", ["wav"], storage=storage)
    client.delete_object(Bucket=name, Key="greeting.wav")
    (row,) = prepare_file(source.as_row(), storage=storage, **OPTIONS)
    assert row["error_stage"] == "read" and row["error_class"] == "ReadError"
    assert "greeting.wav" in row["error"] and row["retryable"] is False


def test_private_object_and_anonymous_access(s3):
    url, client = s3
    name = bucket(client, "mixed")
    client.put_object(Bucket=name, Key="public.wav", Body=(SAMPLES / "greeting.wav").read_bytes(),
                      ACL="public-read")
    client.put_object(Bucket=name, Key="private.wav", Body=(SAMPLES / "greeting.wav").read_bytes())
    storage = {"endpoint_url": url, "anonymous": True}
    sources = {s.source_uri.rsplit("/", 1)[1]: s for s in list_audio(f"s3://{name}", ["wav"],
                                                                    storage={"endpoint_url": url})}
    public = prepare_file(sources["public.wav"].as_row(), storage=storage, **OPTIONS)
    assert public[0].get("error_class") is None and public[0]["segment_count"] == 1
    (private,) = prepare_file(sources["private.wav"].as_row(), storage=storage, **OPTIONS)
    assert private["error_stage"] == "read" and private["retryable"] is False
    assert "Forbidden" in private["error"] or "Access" in private["error"]


class ResettingProxy:
    """A TCP proxy to the S3 server that resets every `every`-th connection (a flaky network)."""

    def __init__(self, target: str, every: int = 2):
        host, port = target.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.every = every
        self.connections = self.resets = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections % self.every == 0:
                self.resets += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_flaky_endpoint_retries_succeed(s3):
    url, client = s3
    name = bucket(client, "flaky")
    upload_samples(client, name, "x/", [SAMPLES / "greeting.wav", SAMPLES / "meeting.mp3"])
    proxy = ResettingProxy(url)
    try:
        # Keep-alive would carry everything over one lucky connection; fresh ones meet the resets.
        storage = {"endpoint_url": proxy.url, "options": {"skip_instance_cache": True,
                                                          "config_kwargs": {"tcp_keepalive": False}}}
        for _ in range(3):
            sources = list(list_audio(f"s3://{name}/x", ["wav", "mp3"], storage=storage))
            assert len(sources) == 2
            for source in sources:
                rows = prepare_file(source.as_row(), storage=storage, **OPTIONS)
                assert rows[0].get("error_class") is None, rows[0].get("error")
    finally:
        proxy.close()
    assert proxy.resets >= 1
