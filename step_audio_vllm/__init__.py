"""Step-Audio-R1 (`StepAudio2ForCausalLM`, model_type `step_audio_2`) for upstream vLLM, as a vLLM plugin.

vLLM runs `register()` in every process it starts (API server, engine core, tensor-parallel workers) through
the entry point group `vllm.general_plugins` (pyproject.toml), possibly more than once: it is idempotent.
It registers the config class (so vLLM reads the checkpoint's config.json without remote code) and the model
class by its import path (imported lazily, when vLLM builds the model). If the running vLLM already knows the
architecture (StepFun's fork), the plugin steps aside and the fork's own implementation serves the model.

Modules: `config` (the checkpoint's config classes), `features` (the audio front end and the item limit),
`model` (processor, encoder, adaptor, the model class), `compare` (plugin vs fork on real weights, for GPUs).
"""

from __future__ import annotations

import logging

ARCHITECTURE = "StepAudio2ForCausalLM"
MODEL_TYPE = "step_audio_2"
_MODEL_PATH = "step_audio_vllm.model:StepAudio2ForCausalLM"

logger = logging.getLogger(__name__)


def register() -> None:
    """Make vLLM know Step-Audio-R1 (the `vllm.general_plugins` entry point)."""
    from vllm import ModelRegistry

    known = getattr(ModelRegistry, "models", {}).get(ARCHITECTURE)
    if known is None and ARCHITECTURE in ModelRegistry.get_supported_archs():
        known = True
    if known is not None and getattr(known, "module_name", "").split(".")[0] != __name__:
        if not _stepped_aside:
            logger.info("vLLM already implements %s (StepFun's fork?): the step_audio_vllm plugin steps aside",
                        ARCHITECTURE)
            _stepped_aside.append(True)
        return
    _register_config()
    ModelRegistry.register_model(ARCHITECTURE, _MODEL_PATH)


_stepped_aside: list[bool] = []


def _register_config() -> None:
    from transformers import AutoConfig

    from step_audio_vllm.config import StepAudio2Config

    AutoConfig.register(MODEL_TYPE, StepAudio2Config, exist_ok=True)
    try:  # vLLM's own table of config classes (private): with it, vLLM loads the config without remote code
        from vllm.transformers_utils.config import _CONFIG_REGISTRY
    except ImportError:
        return
    _CONFIG_REGISTRY[MODEL_TYPE] = StepAudio2Config
