"""How full the engines kept their batches over a run, as the Serve app measured it (deployments.occupancy: each
engine's own count of running sequences over its capacity, sampled on every replica): the run report's mean
occupancy and share of time under 90% full, and what benchmarks print."""

from __future__ import annotations

import logging
from typing import Any

from contract.messages import Occupancy

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0


def engine_occupancy(handle: Any, start: float, end: float) -> Occupancy | None:
    """The occupancy of the app behind `handle` (a DeploymentHandle) from `start` to `end`, wall-clock seconds
    (`time.time()`), across its replicas; None when unknown: the engine cannot count (openai), nothing was
    sampled, or the app did not answer (logged: a run never fails for it). A window that ends now is answered
    once the replicas' samples up to now are in (about half a second)."""
    try:
        return handle.occupancy.remote(start, end).result(timeout_s=TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a figure of the report, not worth the run
        logger.warning("could not read the engines' occupancy", exc_info=True)
        return None
