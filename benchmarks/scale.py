"""Driver memory and speed of listing + planning (issue 8): 1k vs 10k input files (and 30k for the trend).

What it measures: everything the job's driver does before the Dataset executes, by calling
`pipeline.run.run(config)` itself (configs/local.yaml, input = a temp dir of tiny WAVs, 0.1 s each, 1,000
per folder) with the two things that need a model stubbed: the app handed to `run` yields a stand-in handle
that only answers `info`, and `pipeline.run.write_output` keeps the planned Dataset without executing it.
So it covers scanning the output for answered items, listing, writing the plan, building the lazy Dataset,
and counting what was written, whatever `run` does today. Per size:

- peak Python heap of the driver during `run` (tracemalloc; its own run, because tracing slows allocation)
  and per file;
- RSS growth of the driver process (psutil, sampled every 5 ms; includes Arrow buffers tracemalloc does
  not see);
- the time of each step and files per second (runs without tracing).

Each measurement runs in a fresh driver process (clean heap and RSS) connected to one local Ray cluster
started by this script (RAY_TMPDIR in the temp dir); children run every size untraced, then every size traced.

Goal: driver memory independent of the number of files. `ratio=` is peak(1k)/peak(10k) of the tracemalloc
peak (1 is ideal, higher is better; memory linear in files gives 0.1). The plan is streamed to Parquet in
chunks of `pipeline.plan.CHUNK` files (printed): the peak grows until about two chunks are held (the previous
chunk is still referenced while the next one is read) and stays flat after that; the 10k vs 30k figure
shows the trend past 10k.

    .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import remove_tree, scratch, wav_16k  # noqa: E402

SIZES = (1_000, 10_000, 30_000)  # the ratio compares the first two; 30k shows the trend past 10k
PER_FOLDER = 1_000


def make_files(root: Path, n: int) -> None:
    """n tiny 16 kHz mono 16-bit WAVs (0.1 s of a tone), PER_FOLDER per sub-folder."""
    import numpy as np

    samples = (np.sin(np.arange(1600) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2").tobytes()
    data = wav_16k(samples)
    for i in range(n):
        folder = root / f"part{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"call-{i:06d}.wav").write_bytes(data)


class _FakeHandle:
    """Stands in for the Serve app's handle: `run` only asks it for the model's info before execution."""

    app_name = deployment_name = None  # no app for the progress line to watch

    class _Info:
        def remote(self):
            from contract.messages import ModelInfo

            class _Result:
                def result(self, *args, **kwargs):
                    return ModelInfo("whisper-tiny.en", "whisper", 30.0)

            return _Result()

    info = _Info()


def child(uri: str, out: str, address: str, trace: bool) -> None:
    """One driver: `run(config)` up to (not including) the Dataset's execution; prints a JSON line."""
    import threading
    import tracemalloc

    import psutil
    import ray

    import pipeline.run as prun
    from _common import Timers
    from contract.config import load_config

    ray.init(address=address, log_to_driver=False)
    proc = psutil.Process()
    planned = {}

    def fake_app(config):  # what `run` opens instead of the Serve app
        return contextlib.nullcontext(_FakeHandle())

    def no_execution(dataset, writer):  # pipeline.run.write_output: keep the planned Dataset, execute nothing
        planned["dataset"] = dataset

    prun.write_output = no_execution

    # Warm up imports and the connection with the sample clips, so they are not counted.
    prun.run(load_config(None, [f"input.uri={ROOT / 'samples' / 'audio'}", f"output.uri={out}-warm"]), fake_app)

    config = load_config(None, [f"input.uri={uri}", f"output.uri={out}"])
    peak_rss = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)
            time.sleep(0.005)

    rss0 = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if trace:
        tracemalloc.start()
    timers = Timers({})
    t0 = time.perf_counter()
    with timers:
        summary = prun.run(config, fake_app)
    wall = time.perf_counter() - t0
    heap, heap_peak = tracemalloc.get_traced_memory() if trace else (0, 0)
    stop.set()
    sampler.join()
    steps = {k: v for k, v in timers.log.items() if isinstance(v, float) and not k.endswith("@")}
    print(json.dumps({
        "files": summary.files, "wall_s": wall, "steps": steps, "planned": "dataset" in planned,
        "heap_held": heap, "heap_peak": heap_peak,
        "rss_growth": peak_rss[0] - rss0, "rss_held": proc.memory_info().rss - rss0,
    }))
    ray.shutdown()


def main() -> None:
    import ray

    tmp = scratch("bench-scale-")
    try:
        dirs = {}
        for n in SIZES:
            t0 = time.perf_counter()
            dirs[n] = tmp / f"in{n}"
            make_files(dirs[n], n)
            print(f"made {n} tiny WAVs in {time.perf_counter() - t0:.1f} s")
        ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        address = ctx.address_info["address"]
        results: dict[tuple[int, bool], dict] = {}
        for trace in (False, True):
            for n in SIZES:
                out = subprocess.run([sys.executable, __file__, "--child", str(dirs[n]), str(tmp / f"out-{n}-{trace}"),
                                      address, "trace" if trace else "time"], capture_output=True, text=True,
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
                if out.returncode != 0:
                    print(out.stderr[-3000:])
                    raise SystemExit(f"child for {n} files failed")
                results[(n, trace)] = json.loads(out.stdout.strip().splitlines()[-1])
        ray.shutdown()
    finally:
        remove_tree(tmp)

    mb = 1 / 2**20
    try:
        from pipeline.plan import CHUNK

        print(f"pipeline.plan.CHUNK = {CHUNK} files")
    except ImportError:
        print("pipeline.plan.CHUNK: none (no streamed plan)")
    print("run() without executing the Dataset; 'rest' = run() less the steps shown and less the stub's wait in the\n"
          "progress line's exit (it waits up to 3 s for files that the stub never processes)")
    print(f"\n{'files':>7} | {'scan s':>6} {'list+plan s':>11} {'build s':>7} {'report s':>8} {'rest s':>6} "
          f"{'files/s':>8} | {'heap peak MB':>12} {'held MB':>7} {'B/file':>7} | {'RSS growth MB':>13}")
    for n in SIZES:
        t, m = results[(n, False)], results[(n, True)]
        st = t["steps"]
        wall = t["wall_s"] - st.get("__exit__", 0.0)
        scan = st.get("prune", 0.0) + st.get("scan", 0.0)  # reading the output: pruning it, then what it answers
        rest = wall - scan - sum(st.get(k, 0.0) for k in ("write_plan", "build_dataset", "write_report"))
        print(f"{t['files']:7d} | {scan:6.2f} {st.get('write_plan', 0):11.2f} "
              f"{st.get('build_dataset', 0):7.3f} {st.get('write_report', 0):8.2f} {rest:6.2f} "
              f"{t['files'] / wall:8.0f} | "
              f"{m['heap_peak'] * mb:12.2f} {m['heap_held'] * mb:7.2f} {m['heap_peak'] / n:7.0f} | "
              f"{t['rss_growth'] * mb:13.1f}")
    peaks = {n: results[(n, True)]["heap_peak"] for n in SIZES}
    rss = {n: results[(n, False)]["rss_growth"] for n in SIZES}
    print(f"\nheap peak per extra file: 1k->10k {(peaks[10_000] - peaks[1_000]) / 9_000:.0f} B, "
          f"10k->{SIZES[-1] // 1000}k {(peaks[SIZES[-1]] - peaks[10_000]) / (SIZES[-1] - 10_000):.0f} B")
    print(f"peak(1k)/peak(10k): heap {peaks[1_000] / peaks[10_000]:.3f}, RSS growth "
          f"{rss[1_000] / max(1, rss[10_000]):.3f}; peak(10k)/peak({SIZES[-1] // 1000}k): heap "
          f"{peaks[10_000] / peaks[SIZES[-1]]:.3f} (goal: close to 1)")
    print(f"ratio={peaks[1_000] / peaks[10_000]:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "trace")
    else:
        main()
