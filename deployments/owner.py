"""An app started by a batch job is deleted when that job ends, however it ends.

Serve apps outlive the driver that started them (the controller is detached). So the job that starts the app
also starts an owner token: a named, zero-CPU, non-detached actor, which Ray ends together with the driver that
owns it, whether the driver returns, is SIGKILLed, or is stopped with `ray job stop`. The token sits on the
driver's own node (node affinity, not soft), so losing a worker node does not take it. Each replica of the app
looks the token up every `deployment.owner_check_s` (`OwnerWatch`, a thread); once it is gone the replica
deletes its app. An app started otherwise (`serve run`, RayService, or a job's `deployment.reuse_running` that
found it running) has no token and is never deleted this way.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import ray

logger = logging.getLogger(__name__)

NAMESPACE = "audio-reasoning-owners"


class OwnerToken:
    """Holds nothing; exists while the job that started the app does."""

    def alive(self) -> bool:
        return True


def pinned_here() -> Any:
    """A scheduling strategy for a small helper actor: this process's node, which only fails with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def start_token(app_name: str) -> tuple[Any, str]:
    """A new token actor for `app_name`, owned by this driver: the handle (keep it: the token lives as long as
    a handle does, at most as long as the driver) and its name."""
    name = f"{app_name}-owner-{uuid.uuid4().hex[:12]}"
    token = ray.remote(OwnerToken).options(name=name, namespace=NAMESPACE, num_cpus=0, max_restarts=0,
                                           scheduling_strategy=pinned_here()).remote()
    ray.get(token.alive.remote(), timeout=120)
    return token, name


def owner_gone(name: str) -> bool:
    """The token is gone (its driver ended); a lookup that fails otherwise says nothing."""
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


class OwnerWatch(threading.Thread):
    """In a replica: delete the replica's app once its owner's token is gone."""

    def __init__(self, token_name: str, app_name: str, period_s: float):
        super().__init__(daemon=True, name="owner-watch")
        self.token_name, self.app_name, self.period_s = token_name, app_name, period_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            try:
                if not owner_gone(self.token_name):
                    continue
                logger.warning("the job that started app %r has ended (owner token %s gone): deleting the app",
                               self.app_name, self.token_name)
                from ray import serve

                serve.delete(self.app_name, _blocking=False)
                return
            except Exception:  # noqa: BLE001 - a GCS or controller hiccup: look again next period
                logger.exception("owner check of app %r failed", self.app_name)
