"""Engine occupancy under reasoning-like length variance (issue 18): does per-request dispatch keep the engine's
batch full when output lengths vary per request?

Inputs: 400 audio items of 1-3 s cut from the sample clips (`--items`), one task, and a variant of the tiny
random-weight Qwen2-Audio model (`tests.tiny_model`, `mean_length=64`) whose stop token is favoured so that
answers sampled at temperature 1 stop after about 64 tokens on average, lengths roughly geometric, capped at
1,024 (`max_tokens`): each request draws its own length, as reasoning does. Unseeded on both sides (the direct
engine has no per-request seeds as the pipeline makes them). The distribution actually drawn is printed.

- direct: all requests handed to one `AsyncLLM` at once (benchmarks/_direct.py), the engine settings of
  configs/tiny-vllm.yaml: the most this engine can do here.
- pipeline: `run()` with configs/tiny-vllm.yaml on a warm Serve app, with the in-flight settings a real
  deployment uses in the same proportions as configs/step-audio-r1.yaml: `max_ongoing_requests` 1.5 x
  `max_num_seqs` (24 for 16), and the one caller's `requests_in_flight` filling the one replica (24).
  Occupancy is the engine's own count of running sequences over `max_num_seqs`, sampled in the replica
  (deployments.occupancy, read with pipeline.occupancy.engine_occupancy), over the steady state: from the first
  request reaching the engine to the last one reaching it (after that fewer requests remain than the engine has
  places: no dispatch can fill it).

Printed: both rates, whole runs and steady state, the pipeline's mean occupancy and the share of its steady state
with the batch under 90% full, then `ratio=` pipeline / direct output tokens/s in the steady state (whole-run
figures include Ray Data's start, seconds that a real job amortises over hours).

Goals: occupancy >= 0.95, ratio >= 0.95.

    .venv/bin/python benchmarks/occupancy.py [--items 400]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ITEMS = 400
MEAN_LENGTH = 64
CONFIG = ROOT / "configs" / "tiny-vllm.yaml"
OVERRIDES = [
    "engine.engine_kwargs.max_model_len=2048",  # ~100 prompt tokens + up to 1,024 generated
    "deployment.max_ongoing_requests=24",  # = configs/tiny-vllm.yaml: 1.5 x max_num_seqs 16
    "resources.requests_in_flight=24",
    "tasks=[{name: reason, question: 'What do you hear?', prefill: 'off',"
    " sampling: {temperature: 1.0, max_tokens: 1024}}]",
]


def make_files(folder: Path, items: int) -> None:
    """`items` WAVs of 1-3 s (16 kHz mono) cut at different offsets from all sample clips back to back."""
    import numpy as np

    from _common import wav_16k
    from contract.audio import decode

    folder.mkdir(parents=True)
    clips = sorted(p for p in (ROOT / "samples" / "audio").iterdir() if p.is_file())
    signal = np.concatenate([decode(p.read_bytes()) for p in clips])
    for i in range(items):
        n = int((1.0 + 2.0 * ((i * 7) % items) / max(items - 1, 1)) * 16000)
        offset = (i * 16000 * 7 // 3) % (len(signal) - n)
        pcm = (np.clip(signal[offset:offset + n], -1, 1) * 32767).astype("<i2").tobytes()
        (folder / f"item-{i:04d}.wav").write_bytes(wav_16k(pcm))


def lengths(tokens: list[int]) -> str:
    t = sorted(tokens)
    pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]  # noqa: E731
    return (f"{len(t)} answers: mean {sum(t) / len(t):.0f} tokens, median {pick(0.5)}, p90 {pick(0.9)}, p99 "
            f"{pick(0.99)}, max {t[-1]}, min {t[0]} (max/median {t[-1] / max(pick(0.5), 1):.0f}x)")


def main(items: int) -> None:
    from _common import CpuAccount, engine_intervals, scratch, warm_app
    from _direct import DirectEngine, remove_scratch, steady_rate, tiny_model

    tmp = scratch("bench-occupancy-")
    engine = None
    try:
        t0 = time.perf_counter()
        tiny_model(tmp / "tiny-qwen2-audio-stops", MEAN_LENGTH)
        inputs = tmp / "in"
        make_files(inputs, items)
        print(f"tiny model (stop favoured for a mean of {MEAN_LENGTH} tokens) and {items} input files made in "
              f"{time.perf_counter() - t0:.1f} s")
        engine = DirectEngine(CONFIG, inputs, OVERRIDES)

        import numpy as np
        import pyarrow.compute as pc
        import pyarrow.dataset as pads
        import ray
        from ray import serve

        from contract.config import load_config
        from deployments.app import serving
        from pipeline.occupancy import engine_occupancy
        from pipeline.run import run

        config = load_config(CONFIG, [f"input.uri={inputs}", f"output.uri={tmp / 'out'}",
                                      "deployment.reuse_running=true", *OVERRIDES])
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        handle = warm_app(config, np.zeros(16000, dtype=np.float32))
        engine.wait_ready()
        max_num_seqs = config.engine.engine_kwargs["max_num_seqs"]
        print(f"{engine.ready['requests']} requests per run; max_num_seqs {max_num_seqs}, max_ongoing_requests "
              f"{config.deployment.max_ongoing_requests}, requests_in_flight {config.resources.requests_in_flight}")

        with CpuAccount() as direct_cpu:
            direct = engine.run()
        engine.close()
        engine = None
        print(f"direct: {direct['tokens']} tokens in {direct['wall_s']:.1f} s -> "
              f"{direct['tokens'] / direct['wall_s']:.0f} tok/s; {lengths(direct['per_request'])}")

        with CpuAccount() as pipe_cpu:
            summary = run(config, serving)
        rows = pads.dataset(str(tmp / "out")).to_table().filter(pc.field("run_id") == summary.run_id)
        tokens = rows["completion_tokens"].to_pylist()
        arrivals = engine_intervals(rows)
        first_in, last_in = min(a for a, _ in arrivals), max(a for a, _ in arrivals)
        busy = engine_occupancy(handle, first_in, last_in)
        serve.delete(config.deployment.app_name)
        serve.shutdown()
        ray.shutdown()
    finally:
        if engine is not None:
            engine.close()
        remove_scratch(tmp)

    created = [t.timestamp() for t in rows["created_at"].to_pylist()]
    pipe_steady = steady_rate(created, tokens)
    direct_steady = steady_rate(direct["finish"], direct["per_request"])
    print(f"pipeline: {summary}; {sum(tokens)} tokens -> {sum(tokens) / summary.wall_s:.0f} tok/s whole run; "
          f"{lengths(tokens)}")
    print(f"steady state: direct {direct_steady:.0f} tok/s, pipeline {pipe_steady:.0f} tok/s")
    print(f"pipeline occupancy (the engine's running sequences / max_num_seqs, sampled in the replica over the "
          f"{last_in - first_in:.0f} s from the first request reaching the engine to the last, {busy.replica_s:.0f} "
          f"replica-seconds): mean {busy.mean:.3f}, under 90% full {busy.under_90:.1%} of the time")
    inside = sum(max(0.0, min(b, last_in) - max(a, first_in)) for a, b in arrivals) / (last_in - first_in)
    print(f"cross-check from the rows: requests inside the replica's engine call (latency_s, input processing "
          f"included) over the same window: {inside:.1f} on average, of max_num_seqs {max_num_seqs}")
    print(direct_cpu.report("where the CPU went, direct"))
    print(pipe_cpu.report("where the CPU went, pipeline"))
    print(f"ratio={pipe_steady / direct_steady:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--items") + 1]) if "--items" in sys.argv else ITEMS)
