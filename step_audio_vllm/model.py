"""`StepAudio2ForCausalLM` for vLLM 0.32 / 0.33: processor, audio encoder, adaptor, and vLLM's own Qwen2 decoder.

Facts gathered from the public sources (StepFun's vLLM fork, their reference code, SGLang's port), the code
written here:
- each `<audio_patch>` in the prompt (one per audio item) becomes `<audio_start>`, P x `<audio_patch>`,
  `<audio_end>`, with P from the project's formula (contract/formats/step_audio_r1.py); only the patches carry
  audio embeddings;
- encoder `encoder.*`: conv1 (k3 s1 p1) and conv2 (k3 s2 p1) each + GELU, learned positions, pre-LN blocks
  (query/value/out with bias, key without; q and k each scaled by head_dim^-1/4; softmax in float32), average
  pooling by 2, `after_norm`; adaptor `adapter.*`: conv (k3 s2 p1) + GELU, linear1 -> 2048 + ReLU, linear2;
- checkpoint names `model.*` and `lm_head.*` are the Qwen2 decoder's (`language_model.*` here).

Each item runs through the encoder on its own (no padding across items), so an item's embeddings do not depend
on what else is in the batch; the fork pads a batch's items together, which changes the last frames of some
items of a mixed-length batch slightly (`python -m step_audio_vllm.compare` measures the difference on real weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import BatchFeature

from vllm.config import VllmConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor,
                                        BaseProcessingInfo, PromptReplacement, PromptUpdate,
                                        PromptUpdateDetails)
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (AutoWeightsLoader, WeightsMapper, init_vllm_registered_model,
                                              maybe_prefix)

from contract.formats.step_audio_r1 import FORMAT
from step_audio_vllm.features import MAX_SAMPLES, SAMPLE_RATE, check_item, log_mel

AUDIO_START, AUDIO_END, AUDIO_PATCH = "<audio_start>", "<audio_end>", "<audio_patch>"
ADAPTER_HIDDEN = 2048  # fixed in the released adaptor


def num_patches(num_samples: int) -> int:
    """Audio embeddings of one item: the project's formula, less its two markers."""
    return FORMAT.audio_tokens(num_samples, SAMPLE_RATE) - 2


# ---- processing (runs in the API / engine-core process, on CPU) ----

class StepAudioProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        try:
            return MultiModalDataParser(target_sr=SAMPLE_RATE, target_channels=1)
        except TypeError:  # a vLLM whose parser has no channel option
            return MultiModalDataParser(target_sr=SAMPLE_RATE)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None
                                   ) -> Mapping[str, int]:
        return {"audio": num_patches(MAX_SAMPLES - 1) + 2}

    def token_id(self, token: str) -> int:
        return self.get_tokenizer().convert_tokens_to_ids(token)


class StepAudioDummyInputsBuilder(BaseDummyInputsBuilder[StepAudioProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PATCH * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None, **_: Any):
        # Profile with the longest item the encoder takes.
        overrides = mm_options.get("audio") if mm_options else None
        return {"audio": self._get_dummy_audios(length=MAX_SAMPLES - 1, num_audios=mm_counts.get("audio", 0),
                                                overrides=overrides)}


class StepAudioMultiModalProcessor(BaseMultiModalProcessor[StepAudioProcessingInfo]):
    def _call_hf_processor(self, *args: Any, **kwargs: Any) -> BatchFeature:
        # 0.32 calls (hf_data, hf_kwargs) with only the audio (the prompt is tokenized by the renderer); take the
        # first mapping holding audio, wherever a version puts it.
        hf_data = next((a for a in (*args, *kwargs.values()) if isinstance(a, Mapping)
                        and ("audio" in a or "audios" in a)), {})
        audios = hf_data.get("audio") or hf_data.get("audios") or []
        if isinstance(audios, np.ndarray):
            audios = [audios]
        mels = []
        for i, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            check_item(i, len(audio))  # before the encoder: a request error, never a crash
            mels.append(log_mel(audio, self.info.get_hf_config().audio_encoder_config.n_mels))
        if not mels:
            return BatchFeature({})
        return BatchFeature({"audio_mels": torch.cat(mels), "audio_lens": torch.tensor([m.shape[0] for m in mels])})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        lens = hf_inputs.get("audio_lens", torch.empty(0, dtype=torch.long))
        return {"audio_mels": MultiModalFieldConfig.flat_from_sizes("audio", lens),
                "audio_lens": MultiModalFieldConfig.batched("audio")}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: Any) -> Sequence[PromptUpdate]:
        start, end, patch = (self.info.token_id(t) for t in (AUDIO_START, AUDIO_END, AUDIO_PATCH))
        audios = mm_items.get_items("audio", type(mm_items["audio"])) if "audio" in mm_items else None

        def replacement(item_idx: int):
            n = audios.get_audio_length(item_idx)
            check_item(item_idx, n)
            return PromptUpdateDetails.select_token_id([start] + [patch] * num_patches(n) + [end],
                                                       embed_token_id=patch)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]


# ---- the model (runs in the workers) ----

class EncoderAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, width), one item, no padding
        t, width = x.shape
        head_dim = width // self.heads
        scale = head_dim ** -0.25
        q = (self.query(x) * scale).view(t, self.heads, head_dim).transpose(0, 1)
        k = (self.key(x) * scale).view(t, self.heads, head_dim).transpose(0, 1)
        v = self.value(x).view(t, self.heads, head_dim).transpose(0, 1)
        weights = torch.softmax((q @ k.transpose(1, 2)).float(), dim=-1).to(v.dtype)
        return self.out((weights @ v).transpose(0, 1).reshape(t, width))


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = EncoderAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, width: int, heads: int, layers: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(n_ctx, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(layers))
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(width)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:  # (L, n_mels) -> (L2, width), L2 = ceil(L/2) // 2
        x = F.gelu(self.conv1(mels.t().unsqueeze(0)))
        x = F.gelu(self.conv2(x))[0].t()
        positions = self.positional_embedding.weight
        if x.shape[0] > positions.shape[0]:
            raise ValueError(f"audio item of {mels.shape[0]} mel frames exceeds the encoder's "
                             f"{positions.shape[0]} positions")
        x = x + positions[: x.shape[0]]
        for block in self.blocks:
            x = block(x)
        x = self.avg_pooler(x.t().unsqueeze(0))[0].t()
        return self.after_norm(x)


class Adaptor(nn.Module):
    def __init__(self, width: int, llm_dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.stride = stride
        if stride != -1:
            self.conv = nn.Conv1d(width, width, kernel_size, stride, padding=1)
        self.linear1 = nn.Linear(width, ADAPTER_HIDDEN)
        self.linear2 = nn.Linear(ADAPTER_HIDDEN, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != -1:
            x = F.gelu(self.conv(x.t().unsqueeze(0)))[0].t()
        return self.linear2(F.relu(self.linear1(x)))


@MULTIMODAL_REGISTRY.register_processor(StepAudioMultiModalProcessor, info=StepAudioProcessingInfo,
                                        dummy_inputs=StepAudioDummyInputsBuilder)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    # The released checkpoint's names -> this module's.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"model.": "language_model.model.",
                                                          "lm_head.": "language_model.lm_head."})

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_PATCH
        raise ValueError("Step-Audio-R1 takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        audio = config.audio_encoder_config
        self.config = config
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = AudioEncoder(audio.n_mels, audio.n_audio_ctx, audio.n_audio_state, audio.n_audio_head,
                                        audio.n_audio_layer)
            self.adapter = Adaptor(audio.n_audio_state, audio.llm_dim, audio.kernel_size, audio.adapter_stride)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _items(self, audio_mels: Any, audio_lens: Any) -> list[torch.Tensor]:
        """Each item's (L, n_mels) features, whichever way vLLM batched them."""
        if isinstance(audio_lens, torch.Tensor):
            lens = audio_lens.flatten().tolist()
        else:
            lens = [int(n) for n in torch.as_tensor(audio_lens).flatten().tolist()]
        if isinstance(audio_mels, (list, tuple)):
            parts = [m.reshape(-1, m.shape[-1]) for m in audio_mels]
            if len(parts) == len(lens):
                return [p[:n] for p, n in zip(parts, lens)]
            audio_mels = torch.cat(parts)
        if audio_mels.dim() == 3:
            return [audio_mels[i, :n] for i, n in enumerate(lens)]
        return list(torch.split(audio_mels, lens))

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        audio_mels, audio_lens = kwargs.get("audio_mels"), kwargs.get("audio_lens")
        if audio_mels is None:
            return []
        dtype = self.encoder.conv1.weight.dtype
        embeddings = []
        for mels in self._items(audio_mels, audio_lens):
            frames = mels.shape[0]
            features = self.adapter(self.encoder(mels.to(dtype)))
            patches = ((frames + 1) // 2 // 2 - 1) // 2 + 1
            embeddings.append(features[:patches])
        return embeddings

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: Any = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor, *args: Any) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states, *args)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Strict: a weight with no parameter, or a parameter with no weight, stops the load naming it."""
        loader = AutoWeightsLoader(self)
        try:
            loaded = loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
        except ValueError as e:
            raise ValueError(f"Step-Audio-R1 checkpoint has a weight this model does not: {e}") from e
        missing = sorted(set(dict(self.named_parameters())) - set(loaded))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"Step-Audio-R1 checkpoint is missing {len(missing)} weight(s): {shown} "
                             "(vLLM's names: the checkpoint's model.* / lm_head.* are language_model.*)")
        return loaded
