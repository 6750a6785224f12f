"""Writes to a store that fails half-way: a fault-injecting TCP proxy in front of moto's S3 server resets or
stalls a share of the write requests (PUT, POST: single uploads, copies, multipart steps) after passing on part of
them. The job finishes or stops with a clear message; a reader never sees a partial or doubled file; a rerun
completes whatever is missing."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

import boto3
import pyarrow.parquet as pq

from contract.config import load_config
from deployments.app import serving
from pipeline.run import run
from tests.conftest import samples_in

WRITES = (b"PUT ", b"POST ")
KEY = ("item_id", "segment_index", "task", "model", "prompt")


class FaultyWrites:
    """Proxies to `target`; of the write requests, every `every`-th one is passed on only in part (half of its
    first chunk: headers, maybe some body) and then either reset at once or stalled for `stall_s` and then reset,
    alternately. Reads pass untouched. Connections are kept alive by the client, so requests are told apart by
    the request line each one starts with."""

    def __init__(self, target: str, every: int = 3, stall_s: float = 3.0):
        self.target = target.split("//", 1)[1].split(":")
        self.every, self.stall_s = every, stall_s
        self.writes = 0
        self.faults: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection((self.target[0], int(self.target[1])))
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    def _fault(self, chunk: bytes) -> str | None:
        if not chunk.startswith(WRITES):
            return None
        with self.lock:
            self.writes += 1
            if self.writes % self.every:
                return None
            kind = "reset" if (self.writes // self.every) % 2 else "stall"
            self.faults[kind] += 1
            return kind

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while chunk := client.recv(1 << 16):
                kind = self._fault(chunk)
                if kind is None:
                    upstream.sendall(chunk)
                    continue
                upstream.sendall(chunk[:len(chunk) // 2])
                if kind == "stall":
                    time.sleep(self.stall_s)
                break
        except OSError:
            pass
        for s in (client, upstream):
            reset(s)

    @staticmethod
    def _responses(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := upstream.recv(1 << 16):
                client.sendall(chunk)
        except OSError:
            pass
        for s in (client, upstream):
            reset(s)

    def close(self) -> None:
        self.server.close()


def reset(s: socket.socket) -> None:
    """Close with RST, as a dropped connection looks to the other side."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


def visible_rows(url: str, bucket: str, prefix: str) -> list[dict]:
    """What a reader sees, read straight from the server (not through the proxy): every Parquet object outside
    `_` folders, each read whole (a partial file fails here)."""
    import io

    client = boto3.client("s3", endpoint_url=url)
    rows = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith(".parquet") and not any(p.startswith("_") for p in key[len(prefix):].split("/")):
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def test_writes_reset_or_stalled_half_way_leave_no_partial_or_double_file_and_a_rerun_completes(
        s3, whisper_app, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="faulty")
    inputs = samples_in(tmp_path / "in", "greeting.wav", "story.ogg", "note.m4a", "weather.flac", "lecture.wav")
    proxy = FaultyWrites(url)
    sets = [f"input.uri={inputs}", "output.uri=s3://faulty/out", *whisper_app, "output.rows_per_file=1",
            "resources.files_per_task=1", "resources.batch_size=1"]
    try:
        faulty = load_config(None, [*sets, f"storage.endpoint_url={proxy.url}"])
        try:
            first = run(faulty, serving)
            outcome = f"finished: {first}"
        except Exception as e:  # noqa: BLE001 - a run may also stop; then its message must say why
            outcome = f"stopped: {type(e).__name__}: {e}"
            assert "faulty/out" in str(e) or "s3://" in str(e) or "Connection" in str(e), outcome
    finally:
        proxy.close()
    print(f"{proxy.writes} writes, faults {dict(proxy.faults)}; {outcome}")
    assert proxy.faults["reset"] >= 2 and proxy.faults["stall"] >= 2

    seen = visible_rows(url, "faulty", "out/")
    keys = Counter(tuple(r[k] for k in KEY) for r in seen)
    assert not seen or max(keys.values()) == 1, "a doubled row is visible"

    rerun = run(load_config(None, [*sets, f"storage.endpoint_url={url}"]), serving)
    after = visible_rows(url, "faulty", "out/")
    keys = Counter(tuple(r[k] for k in KEY) for r in after)
    assert max(keys.values()) == 1
    assert {r["source_uri"].rsplit("/", 1)[1] for r in after} == {p.name for p in inputs.iterdir()}
    assert len(after) == 5 and not any(r["error_class"] for r in after)  # one row per recording
    assert rerun.rows == len(after) - len(seen)
