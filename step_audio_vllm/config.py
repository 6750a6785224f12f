"""The checkpoint's config: `model_type` `step_audio_2` with a Qwen2 `text_config` and an `audio_encoder_config`.

Only transformers is imported here. vLLM builds its own Qwen2 decoder from `text_config` (a `Qwen2Config`);
`num_attention_groups` (the released name for key/value heads) fills `num_key_value_heads` when that is absent.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config


class StepAudio2EncoderConfig(PretrainedConfig):
    """The audio encoder (Whisper-like, 1500 positions) and the adaptor into the decoder's width."""

    model_type = "step_audio_2_encoder"

    def __init__(self, n_mels: int = 128, n_audio_ctx: int = 1500, n_audio_state: int = 1280,
                 n_audio_head: int = 20, n_audio_layer: int = 32, llm_dim: int = 5120, kernel_size: int = 3,
                 adapter_stride: int = 2, **kwargs: Any):
        self.n_mels = n_mels
        self.n_audio_ctx = n_audio_ctx
        self.n_audio_state = n_audio_state
        self.n_audio_head = n_audio_head
        self.n_audio_layer = n_audio_layer
        self.llm_dim = llm_dim
        self.kernel_size = kernel_size
        self.adapter_stride = adapter_stride
        super().__init__(**kwargs)


class StepAudio2Config(PretrainedConfig):
    model_type = "step_audio_2"
    sub_configs = {"text_config": Qwen2Config, "audio_encoder_config": StepAudio2EncoderConfig}

    def __init__(self, text_config: dict | Qwen2Config | None = None,
                 audio_encoder_config: dict | StepAudio2EncoderConfig | None = None, **kwargs: Any):
        if not isinstance(text_config, Qwen2Config):
            text = dict(text_config or {})
            text.pop("model_type", None)
            if "num_key_value_heads" not in text and "num_attention_groups" in text:
                text["num_key_value_heads"] = text["num_attention_groups"]
            text_config = Qwen2Config(**text)
        if not isinstance(audio_encoder_config, StepAudio2EncoderConfig):
            audio = dict(audio_encoder_config or {})
            audio.pop("model_type", None)
            audio_encoder_config = StepAudio2EncoderConfig(**audio)
        self.text_config = text_config
        self.audio_encoder_config = audio_encoder_config
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> Qwen2Config:
        return self.text_config
