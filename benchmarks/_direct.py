"""The direct side of the vLLM benchmarks: one `AsyncLLM` in a child process, built from a config's
`engine.engine_kwargs` and `engine.env` (the settings the Serve replica uses), answering every task about every
audio file of a folder, all requests handed to the engine at once: the most that engine can do.

    engine = DirectEngine(config_path, inputs_folder, overrides)   # starts the child (the engine loads)
    engine.wait_ready()            # {"engine_start_s", "torch_threads", "requests"}
    result = engine.run()          # {"wall_s", "tokens", "prompt_tokens", "cpu_s", "finish", "per_request"}
    engine.close()

The prompts and sampling parameters are the ones this project's vLLM engine builds (the family's prompt, stop
strings and ids, FINAL_ONLY outputs); audio is decoded before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(config_path: str, inputs: str, overrides: list[str]) -> None:
    """The child's side: "run" on stdin runs all requests once and prints a RESULT line."""
    sys.path.insert(0, str(ROOT))
    from contract.config import load_config

    config = load_config(Path(config_path), [f"input.uri={inputs}", *overrides])
    os.environ.update(config.engine.env)
    import torch
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from contract.audio import decode
    from contract.formats import get_format

    fmt = get_format(config.engine.family)
    audio = [decode(p.read_bytes()) for p in sorted(Path(inputs).iterdir())]
    t0 = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine.engine_kwargs))
    start_s = time.perf_counter() - t0
    max_len = engine.model_config.max_model_len

    def request(a, task):
        prompt = fmt.render_prompt(system=task.system, question=task.question, num_audio=1, prefill=task.prefill)
        s = task.sampling
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                                max_tokens=min(s.max_tokens, max_len - fmt.audio_tokens(len(a)) - 64), seed=s.seed,
                                stop=list(fmt.stop) or None, stop_token_ids=list(fmt.stop_token_ids) or None,
                                skip_special_tokens=fmt.skip_special_tokens, output_kind=RequestOutputKind.FINAL_ONLY)
        return {"prompt": prompt, "multi_modal_data": {"audio": [(a, 16000)]}}, params

    requests = [request(a, t) for a in audio for t in config.tasks]
    counter = iter(range(10**9))

    async def one(inputs_, params, t_start):
        final = None
        async for out in engine.generate(inputs_, params, f"r{next(counter)}"):
            final = out
        return len(final.outputs[0].token_ids), len(final.prompt_token_ids), time.perf_counter() - t_start

    async def run_all():
        t = time.perf_counter()
        done = await asyncio.gather(*(one(i, p, t) for i, p in requests))
        return time.perf_counter() - t, done

    loop = asyncio.new_event_loop()  # one loop for the engine's life: its output handler lives on it
    loop.run_until_complete(one(*requests[0], time.perf_counter()))  # warm-up
    print("READY " + json.dumps({"engine_start_s": start_s, "torch_threads": torch.get_num_threads(),
                                 "requests": len(requests)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        cpu0 = time.process_time()
        wall, done = loop.run_until_complete(run_all())
        cpu = time.process_time() - cpu0
        tokens = [d[0] for d in done]
        print("RESULT " + json.dumps({"wall_s": wall, "tokens": sum(tokens), "prompt_tokens": sum(d[1] for d in done),
                                      "cpu_s": cpu, "finish": [d[2] for d in done], "per_request": tokens}),
              flush=True)
    engine.shutdown()
    loop.close()


class DirectEngine:
    """The parent's side: starts the child at once (the engine loads while the caller does other things)."""

    def __init__(self, config_path: Path, inputs: Path, overrides: list[str] = ()):
        self.proc = subprocess.Popen([sys.executable, __file__, str(config_path), str(inputs), json.dumps(overrides)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.ready: dict = {}

    def wait_ready(self) -> dict:
        self.ready = self._wait("READY ")
        return self.ready

    def _wait(self, prefix: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
        raise SystemExit(f"direct engine process exited ({self.proc.wait()}) before {prefix.strip()}")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._wait("RESULT ")

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def tiny_model(folder: Path, mean_length: int | None = None) -> Path:
    """Build the tiny test model (`tests.tiny_model`, optionally stop-favoured) in `folder` and export it as
    TINY_MODEL_PATH, which configs/tiny-vllm.yaml reads."""
    args = [str(mean_length)] if mean_length is not None else []
    subprocess.run([sys.executable, "-m", "tests.tiny_model", str(folder), *args], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    os.environ["TINY_MODEL_PATH"] = str(folder)
    return folder


def remove_scratch(tmp: Path) -> None:
    """Remove a benchmark's scratch folder, and the file lock vLLM leaves in the system temp dir named after a
    model path inside it."""
    import glob
    import tempfile

    from _common import remove_tree

    remove_tree(tmp)
    for lock in glob.glob(os.path.join(tempfile.gettempdir(), f"*{tmp.name}*.lock")):
        os.remove(lock)


def steady_rate(times: list[float], tokens: list[int]) -> float:
    """Tokens finished after the first completion time, over the time from then to the last completion."""
    pairs = sorted(zip(times, tokens))
    first = pairs[0][0]
    later = sum(t for when, t in pairs if when > first)
    span = pairs[-1][0] - first
    return later / span if span > 0 else float("nan")


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
