"""An independent plain-PyTorch forward of Step-Audio-R1, to check the step_audio_vllm plugin against.

Written from the published facts, not from the plugin: the front end in numpy (framing, a periodic Hann window,
rfft) with transformers' Slaney mel filter bank; the encoder and adaptor as functions of the checkpoint's tensors
(attention through torch's scaled_dot_product_attention); the decoder is transformers' Qwen2ForCausalLM fed
`inputs_embeds`. Runs on CPU in float32 (float64 for the front end). Shares nothing with step_audio_vllm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def log_mel(audio: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """(frames, n_mels): pad 479 zeros, centred STFT (reflect, n_fft 400, hop 160), last frame dropped."""
    from transformers.audio_utils import mel_filter_bank

    x = np.concatenate([audio.astype(np.float64), np.zeros(479)])
    x = np.pad(x, 200, mode="reflect")
    frames = 1 + (len(x) - 400) // 160
    index = np.arange(400)[None, :] + 160 * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    power = np.abs(np.fft.rfft(x[index] * window, axis=1)) ** 2  # (frames, 201)
    power = power[:-1]
    filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    mel = power @ filters  # (frames, n_mels)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


class Reference:
    def __init__(self, checkpoint: str | Path):
        import torch
        from safetensors.torch import load_file
        from transformers import Qwen2Config, Qwen2ForCausalLM

        checkpoint = Path(checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        self.audio = config["audio_encoder_config"]
        self.w = load_file(checkpoint / "model.safetensors")
        text = {k: v for k, v in config["text_config"].items() if k not in ("architectures", "model_type")}
        decoder = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
        state = {k: v for k, v in self.w.items() if k.startswith(("model.", "lm_head."))}
        missing, unexpected = decoder.load_state_dict(state, strict=False)
        assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
        self.decoder = decoder.to(torch.float32)
        self.torch = torch

    def audio_embeddings(self, audio: np.ndarray):
        """(patches, llm_dim) for one 16 kHz item."""
        torch, w = self.torch, self.w
        F = torch.nn.functional
        heads = self.audio["n_audio_head"]
        x = torch.from_numpy(log_mel(audio, self.audio["n_mels"])).t()[None]  # (1, mels, L)
        x = F.gelu(F.conv1d(x, w["encoder.conv1.weight"], w["encoder.conv1.bias"], padding=1))
        x = F.gelu(F.conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2, padding=1))
        x = x[0].t()  # (T, width)
        t, width = x.shape
        x = x + w["encoder.positional_embedding.weight"][:t]
        for i in range(self.audio["n_audio_layer"]):
            b = f"encoder.blocks.{i}."
            h = F.layer_norm(x, (width,), w[b + "attn_ln.weight"], w[b + "attn_ln.bias"])
            q = F.linear(h, w[b + "attn.query.weight"], w[b + "attn.query.bias"])
            k = F.linear(h, w[b + "attn.key.weight"])
            v = F.linear(h, w[b + "attn.value.weight"], w[b + "attn.value.bias"])
            q, k, v = (z.view(t, heads, -1).transpose(0, 1)[None] for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1).reshape(t, width)
            x = x + F.linear(a, w[b + "attn.out.weight"], w[b + "attn.out.bias"])
            h = F.layer_norm(x, (width,), w[b + "mlp_ln.weight"], w[b + "mlp_ln.bias"])
            h = F.linear(F.gelu(F.linear(h, w[b + "mlp.0.weight"], w[b + "mlp.0.bias"])),
                         w[b + "mlp.2.weight"], w[b + "mlp.2.bias"])
            x = x + h
        x = x[: t // 2 * 2].view(t // 2, 2, width).mean(1)  # average pool 2, stride 2
        x = F.layer_norm(x, (width,), w["encoder.after_norm.weight"], w["encoder.after_norm.bias"])
        x = F.gelu(F.conv1d(x.t()[None], w["adapter.conv.weight"], w["adapter.conv.bias"],
                            stride=self.audio["adapter_stride"], padding=1))[0].t()
        x = F.relu(F.linear(x, w["adapter.linear1.weight"], w["adapter.linear1.bias"]))
        return F.linear(x, w["adapter.linear2.weight"], w["adapter.linear2.bias"])

    def prompt_logprobs(self, token_ids: list[int], audios: list[np.ndarray], patch_id: int) -> list[float]:
        """Log-probability of each prompt token after the first, given the expanded prompt `token_ids`
        (every item's patches in place) and the items in order."""
        torch = self.torch
        with torch.no_grad():
            ids = torch.tensor(token_ids)
            embeds = self.decoder.model.embed_tokens(ids).clone()
            audio = torch.cat([self.audio_embeddings(a) for a in audios]) if audios else None
            positions = (ids == patch_id).nonzero().flatten()
            assert (0 if audio is None else len(audio)) == len(positions), (len(positions), audio.shape)
            if audio is not None:
                embeds[positions] = audio
            logits = self.decoder(inputs_embeds=embeds[None]).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            return logprobs[:-1].gather(1, ids[1:, None])[:, 0].tolist()
