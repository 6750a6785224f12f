"""Driver memory while listing and planning an S3 prefix of 1k vs 100k objects (issue 5).

What it measures: the driver's work before any Ray work starts (`pipeline.sources.list_audio` paging through
S3, `pipeline.plan.write_plan` streaming the plan to the output bucket), against a real S3 server (moto's,
on loopback; the objects are put through its backend, listed over HTTP like any S3). Peak Python heap
(tracemalloc) for each size, measured one after the other in this process, plus objects listed per second.
The server runs in this process too, so the peak includes its allocations for the pages it answers (an
overestimate of the driver's own, the same for both sizes); moto answers about 200 listings/s, so the 100k
case takes minutes.

Goal: memory independent of the number of objects. `ratio=` is peak(1k)/peak(100k) (1 is ideal; memory
linear in objects would give 0.01).

    .venv/bin/python benchmarks/listing.py
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = (1_000, 100_000)


def main() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from contract.config import TaskConfig
    from contract.formats import get_format
    from pipeline.answered import Answered
    from pipeline.plan import remove_plan, write_plan
    from pipeline.sources import list_audio

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    storage = {"endpoint_url": f"http://{host}:{port}", "options": {"skip_instance_cache": True}}
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    tasks = [TaskConfig(name="transcribe", question="Please transcribe the audio.")]
    peaks = {}
    try:
        for size in SIZES:
            bucket = f"bench-{size}"
            backend.create_bucket(bucket, "us-east-1")
            for i in range(size):
                backend.put_object(bucket, f"calls/day={i % 30:02d}/call-{i:06d}.wav", b"RIFF")
            tracemalloc.start()
            start = time.perf_counter()
            plan = write_plan(list_audio(f"s3://{bucket}/calls", ["wav"], storage=storage), Answered(), tasks,
                              get_format("whisper"), f"s3://{bucket}/out", "bench", storage)
            seconds = time.perf_counter() - start
            _, peaks[size] = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert plan.listed == plan.todo == size, plan
            remove_plan(plan, storage)
            print(f"{size:>7} objects: listed and planned in {seconds:6.1f} s ({size / seconds:7.0f} objects/s), "
                  f"driver peak heap {peaks[size] / 2**20:6.2f} MiB ({peaks[size] / size:8.1f} B/object)")
    finally:
        server.stop()
    print(f"peak(1k)={peaks[SIZES[0]] / 2**20:.2f} MiB  peak(100k)={peaks[SIZES[1]] / 2**20:.2f} MiB")
    print(f"ratio={peaks[SIZES[0]] / peaks[SIZES[1]]:.3f}")


if __name__ == "__main__":
    main()
