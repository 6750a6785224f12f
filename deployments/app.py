"""Builds the Serve application from the project's config.

`serve run deployments.app:build_app config=configs/local.yaml` and RayService's `import_path` use
`build_app`; the batch job (jobs/transcribe.py) opens it with `serving`, with the config it has already
validated, and hands the pipeline the handle. The one deployment answers the batch job through its handle
(`generate`) and HTTP callers on its route prefix (OpenAI-compatible `/v1/chat/completions`; `serve run`
serves it on http://127.0.0.1:8000/).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.config import ProxyLocation
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle

from contract.config import Config, load_config
from deployments.owner import start_token
from deployments.server import EngineServer

DEPLOYMENT_NAME = "EngineServer"


def deployment_options(config: Config) -> dict[str, Any]:
    """Replica resources, scaling and health settings, as `serve.deployment` options."""
    d = config.deployment
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": d.max_ongoing_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
        "ray_actor_options": {"num_cpus": d.num_cpus},
    }
    if d.autoscaling:
        a = d.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        options["num_replicas"] = d.num_replicas
    if d.gpus_per_replica:
        # The replica actor sits in the first bundle; the engine's tensor-parallel workers take the GPU
        # bundles of the same group, all on one node.
        options["placement_group_bundles"] = [{"CPU": d.num_cpus}] + [{"GPU": 1}] * d.gpus_per_replica
        options["placement_group_strategy"] = "STRICT_PACK"
    return options


def application(config: Config, owner_token: str | None = None, **options: Any) -> Application:
    """The app for `config`; `options` (serve.deployment options, e.g. `ray_actor_options` with a runtime_env)
    replace the config's. With `owner_token` (deployments.owner) the app deletes itself once that token is gone."""
    owner = {"token": owner_token, "check_s": config.deployment.owner_check_s} if owner_token else None
    return serve.deployment(EngineServer).options(**{**deployment_options(config), **options}).bind(
        config.engine.model_dump(mode="json"), config.deployment.request_timeout_s,
        config.deployment.http.model_dump(mode="json"), config.deployment.stall_timeout_s, owner,
    )


def build_app(args: dict[str, Any]) -> Application:
    """Serve's app builder: `config=PATH` and optional `set=[dotted.key=value, ...]`."""
    overrides = args.get("set") or []
    return application(load_config(args.get("config"), [overrides] if isinstance(overrides, str) else overrides))


class EngineStartFailed(Exception):
    """The app's replicas failed to start, or were not running within `deployment.start_timeout_s`; the message is
    one line with the engine's own error where there is one."""


def error_line(message: str) -> str:
    """The exception line a replica's start-up traceback ends in (`ValueError: no model at /x`), else the first
    line of the message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[A-Za-z_][\w.]*: ", line) and not line.endswith(
        "Traceback (most recent call last):")]
    return (raised[-1] if raised else lines[0] if lines else "")[:500]


def wait_until_running(name: str, timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait for the app to run; EngineStartFailed if it fails to start or is not running within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        if status is None:
            raise EngineStartFailed(f"app {name!r} was deleted while it started")
        if status.status == "RUNNING":
            return
        reasons = [error_line(d.message) for d in status.deployments.values() if d.message]
        reason = "; ".join(r for r in reasons if r) or error_line(status.message) or "still deploying, replicas " + \
            ", ".join(f"{n}: {dict(d.replica_states)}" for n, d in status.deployments.items())
        if status.status == "DEPLOY_FAILED":
            raise EngineStartFailed(f"the engine of app {name!r} failed to start: {reason}")
        if time.monotonic() > deadline:
            raise EngineStartFailed(f"the engine of app {name!r} was not running within deployment.start_timeout_s="
                                    f"{timeout_s:g} s: {reason}")
        time.sleep(poll_s)


def start_app(config: Config, owner_token: str | None = None) -> tuple[DeploymentHandle, bool]:
    """The app's handle, and whether this call started it (and so must delete it). An app it starts but that
    does not run within `deployment.start_timeout_s` is deleted, and EngineStartFailed raised.

    Serve, if this starts it, starts without an HTTP proxy: the batch job only needs the handle, and a proxy
    would take port 8000 from a `serve run` or RayService on the same cluster. A Serve already running (with its
    proxy, if it has one) is used as it is."""
    name = config.deployment.app_name
    if _get_global_client(raise_if_no_controller_running=False) is None:
        serve.start(proxy_location=ProxyLocation.Disabled)
    if config.deployment.reuse_running and name in serve.status().applications:
        return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name), False
    (handle,) = serve.run_many([serve.RunTarget(application(config, owner_token), name=name, route_prefix=None)],
                               wait_for_applications_running=False)
    try:
        wait_until_running(name, config.deployment.start_timeout_s)
    except BaseException:
        serve.delete(name, _blocking=False)
        raise
    return handle, True


@contextmanager
def serving(config: Config) -> Iterator[DeploymentHandle]:
    """The app's handle for a `with`: the running app if `deployment.reuse_running` finds it, else one started
    here and deleted on leaving, however the block is left (an exception, Ctrl-C), and, should this process die
    first, by its own replicas (deployments.owner)."""
    token, token_name = (None, None) if _reusing(config) else start_token(config.deployment.app_name)
    try:
        handle, started = start_app(config, token_name)
        try:
            yield handle
        finally:
            if started:
                serve.delete(config.deployment.app_name)
    finally:
        if token is not None:
            ray.kill(token)


def _reusing(config: Config) -> bool:
    return config.deployment.reuse_running and config.deployment.app_name in serve.status().applications
