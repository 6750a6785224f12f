"""Builds the Serve application from the project's config.

`serve run deployments.app:build_app config=configs/local.yaml` and RayService's `import_path` use
`build_app`; the batch job uses `application`, with the config it has already validated. The one deployment
answers the batch job through its handle (`generate`) and HTTP callers on its route prefix (OpenAI-compatible
`/v1/chat/completions`; `serve run` serves it on http://127.0.0.1:8000/).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

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
