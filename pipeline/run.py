"""Composes the stages into one lazy Dataset and runs it against the Serve app.

    list sources ─► prepare (read, decode, segment; CPU tasks) ─► infer (async actors ─► Serve) ─► Parquet
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
from fsspec.core import url_to_fs
from ray import serve

from deployments.app import DEPLOYMENT_NAME, application
from pipeline.config import Config, ConfigError
from pipeline.infer import Infer
from pipeline.prepare import prepare_batch
from pipeline.requests import ModelInfo
from pipeline.sources import SourceFile, list_audio

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    run_id: str
    files: int
    audio_s: float
    rows: int
    errors: int
    wall_s: float
    output_uri: str

    def __str__(self) -> str:
        return (f"run {self.run_id}: {self.files} files, {self.audio_s:.1f} s of audio, {self.rows} rows "
                f"({self.errors} errors) in {self.wall_s:.1f} s -> {self.output_uri}")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def init_ray(config: Config) -> None:
    """Join the cluster named in config or RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=config.ray.num_cpus, include_dashboard=False)


def item_seconds(config: Config, info: ModelInfo) -> float:
    """The item length: the configured one, which may not exceed what the model accepts."""
    if config.segment.max_s is None:
        return info.max_item_s
    if config.segment.max_s > info.max_item_s:
        raise ConfigError(f"segment.max_s: {config.segment.max_s} s is over the {info.max_item_s} s "
                          f"that model family {info.family!r} accepts")
    return config.segment.max_s


def build_dataset(config: Config, sources: list[SourceFile], info: ModelInfo, run_id: str) -> ray.data.Dataset:
    r = config.resources
    files = ray.data.from_items([s.as_row() for s in sources],
                                override_num_blocks=max(1, -(-len(sources) // r.files_per_task)))
    items = files.map_batches(
        prepare_batch, batch_format="pyarrow", batch_size=r.files_per_task, num_cpus=r.decode_cpus,
        fn_kwargs={"max_item_s": item_seconds(config, info), "search_s": config.segment.search_s,
                   "max_duration_s": config.audio.max_duration_s},
    )
    return items.map_batches(
        Infer, batch_format="pyarrow", batch_size=r.batch_size, num_cpus=r.infer_cpus,
        compute=ray.data.ActorPoolStrategy(size=r.infer_actors,
                                           max_tasks_in_flight_per_actor=r.max_concurrent_batches),
        fn_constructor_kwargs={"app_name": config.deployment.app_name, "deployment_name": DEPLOYMENT_NAME,
                               "tasks": [t.model_dump() for t in config.tasks], "model": info.model_name,
                               "run_id": run_id},
    )


def start_app(config: Config) -> tuple[serve.handle.DeploymentHandle, bool]:
    """The app's handle, and whether this job started it (and so must delete it)."""
    name = config.deployment.app_name
    if config.deployment.reuse_running and name in serve.status().applications:
        return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name), False
    return serve.run(application(config), name=name, route_prefix=None), True


def summarize(output_uri: str, run_id: str, files: int, wall_s: float) -> Summary:
    """Counted from what was written, so the summary cannot claim rows that are not there."""
    fs, path = url_to_fs(output_uri)
    written = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["item_id", "segment_index", "duration_s", "error_class"], filter=pc.field("run_id") == run_id)
    segments = written.group_by(["item_id", "segment_index"]).aggregate([("duration_s", "max")])
    audio_s = pc.sum(segments["duration_s_max"]).as_py() or 0.0
    errors = written.num_rows - pc.sum(pc.is_null(written["error_class"])).as_py()
    return Summary(run_id, files, audio_s, written.num_rows, errors, wall_s, output_uri)


def run(config: Config) -> Summary:
    start = time.perf_counter()
    run_id = new_run_id()
    sources = list(list_audio(config.input.uri, config.input.extensions))
    if not sources:
        logger.warning("no audio files under %s (extensions %s)", config.input.uri, config.input.extensions)
        return Summary(run_id, 0, 0.0, 0, 0, time.perf_counter() - start, config.output.uri)
    init_ray(config)
    handle, started = start_app(config)
    try:
        info = handle.info.remote().result()
        dataset = build_dataset(config, sources, info, run_id)
        dataset.write_parquet(config.output.uri, ray_remote_args={"num_cpus": config.resources.write_cpus})
    finally:
        if started:
            serve.delete(config.deployment.app_name)
    return summarize(config.output.uri, run_id, len(sources), time.perf_counter() - start)
