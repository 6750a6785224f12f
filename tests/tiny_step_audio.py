"""A tiny random-weight Step-Audio-R1 checkpoint of the real shape, built offline, for the step_audio_vllm plugin.

What is real about it: `config.json` is structured like the released one (`model_type` `step_audio_2`,
architecture `StepAudio2ForCausalLM`, a Qwen2-like `text_config`, an `audio_encoder_config` with the encoder's
128 mel bins and 1500 positions, adaptor kernel 3 stride 2); the tokenizer holds the special tokens at the real
ids (`<|EOT|>` 151665, `<audio_start>` 151688, `<audio_end>` 151689, `<audio_patch>` 151690, `<tts_start>`
151693, `<tts_end>` 151694, `<audio_0>`... from 151696) in the real vocabulary size 158720; the weights are
safetensors under the released parameter names (`encoder.*`, `adapter.*`, `model.*`, `lm_head.weight`).

What is tiny: widths (encoder 64, decoder 64 with 2 heads of 32: vLLM's CPU attention needs head size 32, 64,
80, ...), 2 encoder and 2 decoder layers, and a ~1k byte-level BPE text vocabulary padded with unreachable
filler tokens up to 151643. About 85 MB, built in seconds:

    python -m tests.tiny_step_audio /tmp/tiny-step-audio

Two deliberate departures, both so a random model can exercise the stop token and the reasoning/answer split:
`</think>` is one added token here (the real tokenizer spells it with two ordinary ones), and the head's rows
for `<|EOT|>` and `</think>` point along a constant direction the last layer adds to every position (through
its `v_proj` bias), so each comes up every few dozen tokens instead of once in 158k. Output is random text:
use it for plumbing, token counts and numerical parity, never quality.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

VOCAB_SIZE = 158720  # Step-Audio 2's (mini's config); R1's is not published in the notes
TEXT_VOCAB = 1024  # trained BPE tokens; fillers pad the text range up to FIRST_SPECIAL
FIRST_SPECIAL = 151643

EOT_ID = 151665
BOT_ID = 151666  # unverified in the notes: any free id in the Qwen/Step reserved range works for the tests
THINK_END_ID = 151667  # "</think>" as one added token (tiny-only; see the module docstring)
AUDIO_START_ID, AUDIO_END_ID, AUDIO_PATCH_ID = 151688, 151689, 151690
TTS_START_ID, TTS_END_ID = 151693, 151694
FIRST_AUDIO_CODE, AUDIO_CODES = 151696, 6562

# The released encoder's layout at tiny widths: n_mels and n_audio_ctx are the real ones (the front end and the
# 29.98 s limit depend on them), kernel 3 stride 2 are the real adaptor's.
AUDIO_ENCODER_CONFIG = {
    "n_mels": 128,
    "n_audio_ctx": 1500,
    "n_audio_state": 64,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "llm_dim": 64,
    "kernel_size": 3,
    "adapter_stride": 2,
}
TEXT_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head size 32
    "num_attention_groups": 1,
    "num_key_value_heads": 1,
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "eos_token_id": [151643, 151645, EOT_ID],
}
ADAPTER_HIDDEN = 2048  # fixed in the released adaptor (linear1 n_state -> 2048)

# The prompt format of contract/formats/step_audio_r1.py (the official template's output for one user turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|BOT|>{{ 'human' if message['role'] == 'user' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] in ('audio', 'input_audio', 'audio_url') %}"
    "<audio_patch>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|EOT|>{% endfor %}{% if add_generation_prompt %}<|BOT|>assistant\n<think>\n{% endif %}"
)


def special_tokens() -> dict[int, str]:
    """Every added token by id, as the real tokenizer places them (unknown reserved slots get neutral names)."""
    names = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", EOT_ID: "<|EOT|>",
             BOT_ID: "<|BOT|>", THINK_END_ID: "</think>", AUDIO_START_ID: "<audio_start>",
             AUDIO_END_ID: "<audio_end>", AUDIO_PATCH_ID: "<audio_patch>", TTS_START_ID: "<tts_start>",
             TTS_END_ID: "<tts_end>"}
    names.update({FIRST_AUDIO_CODE + i: f"<audio_{i}>" for i in range(AUDIO_CODES)})
    return {i: names.get(i, f"<|reserved_{i}|>") for i in range(FIRST_SPECIAL, VOCAB_SIZE)}


def _build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_model import _corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    # Fillers up to the first special id, so every id below it decodes (a random model samples them all);
    # no merge produces them, so encoding never does.
    for i in range(len(vocab), FIRST_SPECIAL):
        vocab[f"Ġw{i}"] = i
    specials = special_tokens()
    spec["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": i != THINK_END_ID}
        for i, t in specials.items()
    ]
    tok = Tokenizer.from_str(json.dumps(spec))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|EOT|>", pad_token="<|endoftext|>", model_max_length=16384,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(path)
    return fast


def _weights(seed: int) -> dict:
    """Random tensors under the released checkpoint's names."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    g = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    a = AUDIO_ENCODER_CONFIG
    n, mels, ctx = a["n_audio_state"], a["n_mels"], a["n_audio_ctx"]
    w = {
        "encoder.conv1.weight": normal(n, mels, 3, std=1 / math.sqrt(3 * mels)),
        "encoder.conv1.bias": normal(n),
        "encoder.conv2.weight": normal(n, n, 3, std=1 / math.sqrt(3 * n)),
        "encoder.conv2.bias": normal(n),
        "encoder.positional_embedding.weight": normal(ctx, n, std=0.5),
        "encoder.after_norm.weight": 1 + normal(n, std=0.1),
        "encoder.after_norm.bias": normal(n, std=0.1),
    }
    for i in range(a["n_audio_layer"]):
        b = f"encoder.blocks.{i}."
        for ln in ("attn_ln", "mlp_ln"):
            w[b + ln + ".weight"] = 1 + normal(n, std=0.1)
            w[b + ln + ".bias"] = normal(n, std=0.1)
        for proj in ("query", "key", "value", "out"):
            w[b + f"attn.{proj}.weight"] = normal(n, n, std=1 / math.sqrt(n))
            if proj != "key":  # the released key projection has no bias
                w[b + f"attn.{proj}.bias"] = normal(n)
        w[b + "mlp.0.weight"] = normal(4 * n, n, std=1 / math.sqrt(n))
        w[b + "mlp.0.bias"] = normal(4 * n)
        w[b + "mlp.2.weight"] = normal(n, 4 * n, std=1 / math.sqrt(4 * n))
        w[b + "mlp.2.bias"] = normal(n)
    k, llm = a["kernel_size"], a["llm_dim"]
    w.update({
        "adapter.conv.weight": normal(n, n, k, std=1 / math.sqrt(k * n)),
        "adapter.conv.bias": normal(n),
        "adapter.linear1.weight": normal(ADAPTER_HIDDEN, n, std=1 / math.sqrt(n)),
        "adapter.linear1.bias": normal(ADAPTER_HIDDEN),
        # Audio embeddings about as large as text embeddings (std 0.02 x sqrt(64)), so both steer the decoder.
        "adapter.linear2.weight": normal(llm, ADAPTER_HIDDEN, std=0.3 / math.sqrt(ADAPTER_HIDDEN)),
        "adapter.linear2.bias": normal(llm),
    })

    torch.manual_seed(seed)
    text = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in TEXT_CONFIG.items()
                                           if k not in ("architectures", "model_type")})).eval()
    decoder = {name: t.detach().clone() for name, t in text.state_dict().items()}
    # Every parameter random (transformers zeroes biases and sets norms to one).
    for name, t in decoder.items():
        if name.endswith("bias") or "norm" in name:
            decoder[name] = (1 if "norm" in name else 0) + normal(*t.shape, std=0.1)
    # A constant direction in the last layer's output: the v_proj bias passes through attention unchanged
    # (softmax weights sum to one), so o_proj(v_bias) is added at every position. The head's rows for <|EOT|>
    # and </think> point along it, so a sampled sequence closes its reasoning (p ~ 0.04 a token) and stops
    # (p ~ 0.03) within a few dozen tokens.
    last = TEXT_CONFIG["num_hidden_layers"] - 1
    hidden = TEXT_CONFIG["hidden_size"]
    vb = f"model.layers.{last}.self_attn.v_proj.bias"
    decoder[vb] = normal(*decoder[vb].shape, std=1.0)
    head_dim = hidden // TEXT_CONFIG["num_attention_heads"]
    v_full = decoder[vb].repeat(TEXT_CONFIG["num_attention_heads"] // TEXT_CONFIG["num_key_value_heads"])
    direction = decoder[f"model.layers.{last}.self_attn.o_proj.weight"] @ v_full
    direction = direction * decoder["model.norm.weight"]
    assert v_full.numel() == head_dim * TEXT_CONFIG["num_attention_heads"]
    unit = direction / direction.norm()
    for token, boost in ((EOT_ID, 1.1), (THINK_END_ID, 1.15)):
        decoder["lm_head.weight"][token] = unit * boost
    w.update(decoder)
    return {name: t.to(torch.float32).contiguous() for name, t in w.items()}


def config() -> dict:
    return {
        "architectures": ["StepAudio2ForCausalLM"],
        "model_type": "step_audio_2",
        "audio_encoder_config": dict(AUDIO_ENCODER_CONFIG),
        "text_config": dict(TEXT_CONFIG),
        "torch_dtype": "float32",
        "transformers_version": "4.53.3",
    }


def build_tiny_step_audio(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint (config.json, tokenizer, model.safetensors) to `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(path)
    (path / "config.json").write_text(json.dumps(config(), indent=2) + "\n")
    (path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": TEXT_CONFIG["eos_token_id"], "pad_token_id": 151643}, indent=2) + "\n")
    save_file(_weights(seed), path / "model.safetensors", metadata={"format": "pt"})
    return path


if __name__ == "__main__":
    print(build_tiny_step_audio(sys.argv[1] if len(sys.argv) > 1 else "tiny-step-audio"))
