"""Engines a replica can hold, behind one small interface (`base.Engine`).

Each engine module imports its heavy library (vllm, faster_whisper, httpx) itself, so only the engine a
replica uses is ever imported.
"""

from __future__ import annotations

import importlib

from contract.config import EngineConfig
from deployments.engines.base import Engine

_MODULES = {"whisper": "deployments.engines.whisper", "vllm": "deployments.engines.vllm",
            "openai": "deployments.engines.openai"}


def create_engine(config: EngineConfig) -> Engine:
    module = importlib.import_module(_MODULES[config.kind])
    return module.ENGINE(config)
