"""Compare the plugin's Step-Audio-R1 with StepFun's fork on the released weights, for a user with GPUs.

The plugin and the fork cannot share one vLLM (the plugin steps aside where vLLM knows the model), so run the
same files through each environment, then compare the two records:

    # upstream vLLM + this project (e.g. the project's image)
    python -m step_audio_vllm.compare run --model /models/Step-Audio-R1 --out plugin.json a.wav b.wav c.wav
    # StepFun's fork (e.g. stepfun2025/vllm:step-audio-2-v20250909 with this project installed)
    python -m step_audio_vllm.compare run --model /models/Step-Audio-R1 --out fork.json a.wav b.wav c.wav
    python -m step_audio_vllm.compare diff plugin.json fork.json

Each file is cut into items of at most 25 s (all sent in one request, the reference client's way), prompted with
the project's Step-Audio-R1 format, and decoded greedily. `run` records the prompt token ids, every prompt
token's log-probability and the generated tokens; `diff` prints, per file, whether the prompts are identical, the
largest prompt log-prob difference, and where the generations first differ. On bf16 GPUs expect small log-prob
differences (kernels differ) and greedy outputs that agree for a long prefix; a different prompt token count or
large differences mean an implementation difference. Extra engine options: `--engine KEY=VALUE` (YAML values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ITEM_S = 25.0
SR = 16000


def _items(path: Path) -> list:
    from contract.audio import decode

    audio = decode(path.read_bytes())
    step = int(ITEM_S * SR)
    return [audio[i:i + step] for i in range(0, len(audio), step) if len(audio[i:i + step]) >= SR // 10]


def _implementation() -> str:
    from vllm import ModelRegistry

    entry = getattr(ModelRegistry, "models", {}).get("StepAudio2ForCausalLM")
    return getattr(entry, "module_name", repr(entry))


def run(args: argparse.Namespace) -> None:
    import yaml
    from vllm import LLM, SamplingParams

    from contract.formats.step_audio_r1 import FORMAT

    engine = {"model": args.model, "tensor_parallel_size": args.tp, "dtype": "bfloat16", "max_model_len": 16384,
              "trust_remote_code": True, "limit_mm_per_prompt": {"audio": 8}, "seed": 0}
    for kv in args.engine:
        key, _, value = kv.partition("=")
        engine[key] = yaml.safe_load(value)
    llm = LLM(**engine)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, prompt_logprobs=0,
                            stop_token_ids=list(FORMAT.stop_token_ids), skip_special_tokens=False)
    records = []
    for name in args.files:
        items = _items(Path(name))
        prompt = FORMAT.render_prompt(system=None, question=args.question, num_audio=len(items))
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"audio": [(a, SR) for a in items]}}, params,
                           use_tqdm=False)[0]
        ids = list(out.prompt_token_ids)
        logprobs = [None] + [entry[tok].logprob if entry else None for tok, entry in
                             zip(ids[1:], out.prompt_logprobs[1:])]
        records.append({"file": os.path.basename(name), "items": len(items), "prompt_ids": ids,
                        "prompt_logprobs": logprobs, "output_ids": list(out.outputs[0].token_ids),
                        "text": out.outputs[0].text})
    Path(args.out).write_text(json.dumps({"implementation": _implementation(), "engine": engine,
                                          "records": records}))
    print(f"{len(records)} files by {_implementation()} -> {args.out}")


def diff(args: argparse.Namespace) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    print(f"A: {a['implementation']}\nB: {b['implementation']}")
    worst = 0.0
    same_prompts = True
    for ra, rb in zip(a["records"], b["records"]):
        same = ra["prompt_ids"] == rb["prompt_ids"]
        same_prompts &= same
        lp = [abs(x - y) for x, y in zip(ra["prompt_logprobs"], rb["prompt_logprobs"])
              if x is not None and y is not None] if same else []
        largest = max(lp, default=float("nan"))
        worst = max(worst, largest) if lp else worst
        first = next((i for i, (x, y) in enumerate(zip(ra["output_ids"], rb["output_ids"])) if x != y),
                     min(len(ra["output_ids"]), len(rb["output_ids"])))
        identical = ra["output_ids"] == rb["output_ids"]
        print(f"{ra['file']}: {ra['items']} items, prompt {'identical' if same else 'DIFFERENT'} "
              f"({len(ra['prompt_ids'])} vs {len(rb['prompt_ids'])} tokens), largest prompt log-prob difference "
              f"{largest:.4g}, output {'identical' if identical else f'first differs at token {first}'} "
              f"({len(ra['output_ids'])} vs {len(rb['output_ids'])} tokens)")
    print(f"largest prompt log-prob difference over all files: {worst:.4g}")
    return 0 if same_prompts else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m step_audio_vllm.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run files through this environment's vLLM, record the results")
    r.add_argument("--model", required=True, help="the Step-Audio-R1 weights (a directory)")
    r.add_argument("--out", required=True, help="where to write the record (JSON)")
    r.add_argument("--tp", type=int, default=4, help="tensor parallel size")
    r.add_argument("--max-tokens", type=int, default=512, help="greedy tokens generated per file")
    r.add_argument("--question", default="Please transcribe the audio.", help="the user's text")
    r.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE", help="more engine options")
    r.add_argument("files", nargs="+", help="audio files (any format the project decodes)")
    d = sub.add_parser("diff", help="compare two records")
    d.add_argument("a")
    d.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
        return 0
    return diff(args)


if __name__ == "__main__":
    sys.exit(main())
