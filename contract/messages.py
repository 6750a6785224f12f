"""What the pipeline sends to the Serve app and what comes back: the one contract between them.

Both sides import this module; it holds plain dataclasses (cheap to pickle through a DeploymentHandle)
and no engine or Ray code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.config import SamplingConfig
from contract.text import summary

# Seconds: from a short Whisper item on a GPU to a long reasoning chain on a busy engine. The pipeline's and
# the replicas' latency histograms share these buckets, so the two line up.
LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800]


ERROR_LIMIT = 2000  # characters of an error message kept in a row: every decoder's reason fits, a payload not


def error_fields(exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    """An exception as the error fields that results and output rows share: the one mapping of the two."""
    return {"error_class": type(exc).__name__, "error": summary(str(exc) or type(exc).__name__, ERROR_LIMIT),
            "retryable": retryable}


@dataclass
class GenerationRequest:
    """One question about one or more audio items (mono float32 at 16 kHz)."""

    request_id: str
    audio: list[np.ndarray]
    question: str
    system: str | None = None
    prefill: str = "think"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    answer_schema: dict[str, Any] | None = None  # the answer must be JSON holding to it (contract.answers)
    # The items are the consecutive pieces of one recording (or of one window of it), not separate clips:
    # an engine that takes long audio itself (whisper's long-form transcription) joins them.
    recording: bool = False


@dataclass
class GenerationResult:
    """What the engine made of a request, or why it could not.

    `error_class` set means the request failed; `retryable` says whether sending it again could help
    (a timeout or a dead engine) or not (audio the model cannot take).
    """

    request_id: str
    prompt: str | None = None
    text: str | None = None
    reasoning: str | None = None
    answer: str | None = None
    finish_reason: str | None = None
    truncated: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None  # the engine's own time for the request
    queue_s: float | None = None  # time it waited before that: for an engine slot, or in the engine's own queue
    error_class: str | None = None
    error: str | None = None
    retryable: bool = False
    # Timestamped pieces of the answer, (start_s, end_s, text), from engines that make them (whisper).
    segments: list[tuple[float, float, str]] | None = None

    @classmethod
    def failure(cls, request_id: str, exc: BaseException, *, retryable: bool) -> GenerationResult:
        return cls(request_id=request_id, finish_reason="error", **error_fields(exc, retryable=retryable))

    def error_fields(self) -> dict[str, Any]:
        """Its error fields if it failed, else none (an answered row leaves them null)."""
        if not self.error_class:
            return {}
        return {"error_class": self.error_class, "error": self.error, "retryable": self.retryable}


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about the model behind the app, asked once at start."""

    model_name: str
    family: str
    max_item_s: float
    # The request budget, as the running engine has it (never a copy in the config): prompt + max_tokens must
    # fit max_model_len, and a request holds at most max_audio_items items. None: no such bound.
    max_model_len: int | None = None
    max_audio_items: int | None = None


# A batch holding less than this share of the engine's capacity counts as not full (`Occupancy.under_90`).
FULL_SHARE = 0.9


@dataclass(frozen=True)
class Occupancy:
    """How full the app's engines kept their batches over a time window: each engine's own count of running
    sequences over its capacity (vLLM's `max_num_seqs`, whisper's workers), sampled on every replica and
    weighted by time, so a replica that ran half the window counts half."""

    mean: float  # mean of running / capacity over the replica-time sampled
    under_90: float  # share of that replica-time with the batch under FULL_SHARE of its capacity
    replica_s: float  # replica-seconds sampled in the window
