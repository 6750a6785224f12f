"""Pipeline overhead around the vLLM engine (issue 3): output tokens/s through `pipeline.run.run` vs the
same requests straight into vLLM's `AsyncLLM`.

What it measures, in one run, on the same 48 audio items (`--items`; 5-10 s each, cut from the sample clips,
written as 16 kHz WAVs to a temp dir) and the tasks of configs/tiny-vllm.yaml (2 tasks, so 96 requests: temperature 0,
max_tokens 32, seed 0), with the tiny random-weight Qwen2-Audio model built by `tests.tiny_model`:

- direct: an `AsyncLLM` built in a child process from the config's `engine.engine_kwargs` and `engine.env`
  (the settings the Serve replica uses), warmed up with one request, then all 96 requests submitted at once
  (`asyncio.gather`), with the prompts and sampling parameters this project's vLLM engine builds
  (`contract.formats.qwen2_audio` prompt, stop `<|im_end|>`, FINAL_ONLY output). Audio is decoded before
  the clock starts.
- pipeline: the Serve app of configs/tiny-vllm.yaml started first (`serve.run(application(config))`) and
  warmed with one request, then `run(config)` with `deployment.reuse_running=true` over the 48 files
  (output scan, listing and plan, Ray Data's read/repartition/decode tasks and Infer actor, the handle
  calls, Parquet). Engine start-up is excluded from both (the two engines start at the same time, which
  only saves wall time); Ray Data's own start-up inside the job is included: every job pays it.
  Tokens are the sum of `completion_tokens` in the Parquet rows of the run.

The two alternate, twice: direct, pipeline, direct, pipeline (each engine stays up, idle, while the other
runs); each path's two runs are pooled (total tokens / total time), against the shared machine's noise.
Pipeline #1 is the cluster's first Ray Data job (its worker processes start and import cold, as in a job
that starts its own cluster); pipeline #2 finds them warm: the difference is Ray's worker start-up.

Output tokens/s is the figure compared (the pipeline cannot pass `ignore_eos`, so a request may stop early;
at temperature 0 both paths generate the same tokens, and both sums are printed to show it).
Also printed, to say where the time goes: the steps of `run` and Ray Data's per-operator stats, when the
first answers came back, a steady-state rate (tokens finished after the first batch over the time from
then on), each vLLM engine core's thread settings and CPU time, and the CPU time of every process of the
run and of everything else on the machine.

Job start: the time from calling `run()` to the first request reaching the engine (from the rows' `created_at`
and `latency_s`), on a warm cluster and app: listing, planning, Ray Data's start and the first decode.

Goal: `ratio=` pipeline tokens/s / direct tokens/s (whole runs, wall clock, pooled) >= 0.9.

    .venv/bin/python benchmarks/engine_overhead.py [--items 48]

`--items N` sets the number of audio items (2 requests each): a longer job shows the pipeline with its fixed
start-up amortised, as in the scheduled jobs it is for.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ITEMS = 48
CONFIG = ROOT / "configs" / "tiny-vllm.yaml"


def make_files(folder: Path, items: int) -> None:
    """`items` WAVs of 5-10 s (16 kHz mono), cut at different offsets from all sample clips back to back."""
    import numpy as np

    from _common import wav_16k
    from contract.audio import decode

    folder.mkdir(parents=True)
    clips = sorted(p for p in (ROOT / "samples" / "audio").iterdir() if p.is_file())
    signal = np.concatenate([decode(p.read_bytes()) for p in clips])
    offset = 0
    for i in range(items):
        n = int((5.0 + 5.0 * ((i * 7) % items) / (items - 1)) * 16000)  # 5..10 s, shuffled
        if offset + n > len(signal):
            offset = (offset + 16000 * 3) % (len(signal) - n)
        pcm = (np.clip(signal[offset:offset + n], -1, 1) * 32767).astype("<i2").tobytes()
        offset += n
        (folder / f"item-{i:03d}.wav").write_bytes(wav_16k(pcm))


def engine_cores() -> list[dict]:
    """vLLM engine-core processes among this run's processes: where, OMP_NUM_THREADS they started with,
    OS threads (torch's pool is most of them), CPU time so far."""
    import psutil

    from _common import _label

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if not p.name().startswith("VLLM::"):
                continue
            t = p.cpu_times()
            found.append({"role": _label(p, os.getpid()), "pid": p.pid,
                          "omp": p.environ().get("OMP_NUM_THREADS", "unset"), "threads": p.num_threads(),
                          "cpu_s": t.user + t.system})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def main(items: int) -> None:
    from _common import CpuAccount, Timers, busy_report, engine_intervals, scratch, warm_app
    from _direct import DirectEngine, remove_scratch, steady_rate, tiny_model

    tmp = scratch("bench-engine-")
    engine = None
    try:
        t0 = time.perf_counter()
        tiny_model(tmp / "tiny-qwen2-audio")
        inputs = tmp / "in"
        make_files(inputs, items)
        print(f"tiny model and {items} input files made in {time.perf_counter() - t0:.1f} s")

        # Both engines start at once (start-up is excluded from the timings; this only saves wall time).
        engine = DirectEngine(CONFIG, inputs)

        import numpy as np
        import pyarrow.compute as pc
        import pyarrow.dataset as pads
        import ray
        from ray import serve

        from contract.config import load_config
        from deployments.app import serving
        from pipeline.run import run

        config = load_config(CONFIG, [f"input.uri={inputs}", f"output.uri={tmp / 'out'}",
                                      "deployment.reuse_running=true"])
        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        ray_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_app(config, np.zeros(5 * 16000, dtype=np.float32))
        app_s = time.perf_counter() - t0
        engine.wait_ready()
        print(f"Ray started in {ray_s:.1f} s, Serve app (engine) in {app_s:.1f} s, direct engine in "
              f"{engine.ready['engine_start_s']:.1f} s (all excluded); {engine.ready['requests']} requests per run")
        engine_threads = {"direct": engine.ready["torch_threads"]}
        for c in engine_cores():
            print(f"  {c['role']}: pid {c['pid']}, OMP_NUM_THREADS={c['omp']}, {c['threads']} OS threads")
            if "replica" in c["role"]:
                engine_threads["replica"] = c["omp"]

        direct_runs, pipe_runs = [], []
        for round_ in (1, 2):
            with CpuAccount() as cpu:
                d = engine.run()
            d["cpu"] = cpu
            direct_runs.append(d)
            print(f"direct #{round_}: {d['tokens']} tokens in {d['wall_s']:.2f} s -> {d['tokens'] / d['wall_s']:.0f} "
                  f"tok/s")
            out = tmp / f"out{round_}"  # a run into the same output would find everything answered
            run_config = config.model_copy(deep=True)
            run_config.output.uri = str(out)
            timers = Timers({})
            called = time.time()
            with timers, CpuAccount() as cpu:
                summary = run(run_config, serving)
            rows = pads.dataset(str(out)).to_table().filter(pc.field("run_id") == summary.run_id)
            tokens = pc.sum(rows["completion_tokens"]).as_py() or 0
            exec_start = timers.execute_started()
            feed = busy_report(engine_intervals(rows), exec_start, exec_start + timers.execute()) \
                if exec_start else ""
            pipe_runs.append({"summary": summary, "rows": rows, "tokens": tokens, "timers": timers, "cpu": cpu,
                              "wall_s": summary.wall_s, "feed": feed})
            first_in_engine = min(a for a, _ in engine_intervals(rows))
            print(f"pipeline #{round_}: {summary}; {tokens} tokens -> {tokens / summary.wall_s:.0f} tok/s; job start "
                  f"(run() called to the first request in the engine) {first_in_engine - called:.1f} s, "
                  f"{(first_in_engine - called) / summary.wall_s:.0%} of the run")
        serve.delete(config.deployment.app_name)
        engine.close()
        engine = None
        serve.shutdown()
        ray.shutdown()
    finally:
        if engine is not None:
            engine.close()
        remove_scratch(tmp)

    def pooled(runs: list[dict]) -> float:
        return sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs)

    direct_rate, pipe_rate = pooled(direct_runs), pooled(pipe_runs)
    d_steady = sum(steady_rate(d["finish"], d["per_request"]) for d in direct_runs) / len(direct_runs)
    print(f"\nrequests per run: direct {len(direct_runs[0]['per_request'])}, pipeline "
          f"{pipe_runs[0]['rows'].num_rows} rows ({pipe_runs[0]['summary'].errors} errors); completion tokens: direct "
          f"{' / '.join(str(d['tokens']) for d in direct_runs)}, pipeline "
          f"{' / '.join(str(p['tokens']) for p in pipe_runs)}; prompt tokens: direct {direct_runs[0]['prompt_tokens']}, "
          f"pipeline {pc.sum(pipe_runs[0]['rows']['prompt_tokens']).as_py()}")
    walls = ", ".join(f"{d['wall_s']:.2f}" for d in direct_runs)
    print(f"direct:   runs {walls} s -> {direct_rate:.0f} tok/s "
          f"pooled; steady state {d_steady:.0f} tok/s")
    p_steadies = []
    for i, p in enumerate(pipe_runs, 1):
        rows, timers, summary = p["rows"], p["timers"], p["summary"]
        created = [t.timestamp() for t in rows["created_at"].to_pylist()]
        p_steady = steady_rate(created, rows["completion_tokens"].to_pylist())
        p_steadies.append(p_steady)
        lat = sorted(rows["latency_s"].to_pylist())
        print(f"pipeline #{i}{' (first Ray Data job: cold workers)' if i == 1 else ' (warm workers)'}: "
              f"{summary.wall_s:.2f} s -> {p['tokens'] / summary.wall_s:.0f} tok/s; steady state (after the first "
              f"batch) {p_steady:.0f} tok/s; engine latency per request median {lat[len(lat) // 2]:.2f} s")
        print(f"  run() steps: {timers.describe(summary.wall_s)}")
        for line in timers.operator_times():
            print(f"    {line}")
        exec_start = timers.execute_started()
        if exec_start:
            print(f"  Dataset execution: first batch of answers written {min(created) - exec_start:.1f} s after it "
                  f"started, last {max(created) - exec_start:.1f} s")
            print(f"  {p['feed']}")
    core_direct = sum(d["cpu"].by_role().get("vLLM engine core (direct)", 0.0) for d in direct_runs) / 2
    core_pipe = sum(p["cpu"].by_role().get("vLLM engine core (in Serve replica)", 0.0) for p in pipe_runs) / 2
    print(f"engine-core CPU per run for the same {pipe_runs[0]['tokens']} tokens: direct {core_direct:.1f} s (torch "
          f"threads {engine_threads.get('direct', '?')}), in the Serve replica {core_pipe:.1f} s (OMP_NUM_THREADS "
          f"{engine_threads.get('replica', '?')})")
    print("where the CPU went (CPU seconds):")
    for i in range(2):
        print("  " + direct_runs[i]["cpu"].report(f"direct #{i + 1}"))
        print("  " + pipe_runs[i]["cpu"].report(f"pipeline #{i + 1} run()"))
    print(f"pipeline/direct tokens/s: {pipe_rate / direct_rate:.2f} pooled (#1 "
          f"{pipe_runs[0]['tokens'] / pipe_runs[0]['wall_s'] / direct_rate:.2f}, #2 "
          f"{pipe_runs[1]['tokens'] / pipe_runs[1]['wall_s'] / direct_rate:.2f}) (goal 0.9); steady state "
          f"{sum(p_steadies) / len(p_steadies) / d_steady:.2f}")
    print(f"ratio={pipe_rate / direct_rate:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--items") + 1]) if "--items" in sys.argv else ITEMS)
