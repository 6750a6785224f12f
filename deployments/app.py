"""Builds the Serve application from the project's config.

`serve run deployments.app:build_app config=configs/local.yaml` and RayService's `import_path` use
`build_app`; the batch job (jobs/transcribe.py) opens it with `serving`, with the config it has already
validated, and hands the pipeline the handle. The one deployment answers the batch job through its handle
(`generate`) and HTTP callers on its route prefix (OpenAI-compatible `/v1/chat/completions`; `serve run`
serves it on http://127.0.0.1:8000/).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from contract.config import Config, load_config
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


def application(config: Config, **options: Any) -> Application:
    """The app for `config`; `options` (serve.deployment options, e.g. `ray_actor_options` with a runtime_env)
    replace the config's."""
    return serve.deployment(EngineServer).options(**{**deployment_options(config), **options}).bind(
        config.engine.model_dump(mode="json"), config.deployment.request_timeout_s,
        config.deployment.http.model_dump(mode="json"), config.deployment.stall_timeout_s,
    )


def build_app(args: dict[str, Any]) -> Application:
    """Serve's app builder: `config=PATH` and optional `set=[dotted.key=value, ...]`."""
    overrides = args.get("set") or []
    return application(load_config(args.get("config"), [overrides] if isinstance(overrides, str) else overrides))


def start_app(config: Config) -> tuple[DeploymentHandle, bool]:
    """The app's handle, and whether this call started it (and so must delete it)."""
    name = config.deployment.app_name
    if config.deployment.reuse_running and name in serve.status().applications:
        return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name), False
    return serve.run(application(config), name=name, route_prefix=None), True


@contextmanager
def serving(config: Config) -> Iterator[DeploymentHandle]:
    """The app's handle for a `with`: the running app if `deployment.reuse_running` finds it, else one started
    here and deleted on leaving, however the block is left (an exception, Ctrl-C)."""
    handle, started = start_app(config)
    try:
        yield handle
    finally:
        if started:
            serve.delete(config.deployment.app_name)
