"""Multi-node placement scenario (issue 3 item 7), run in its own process by tests/deployments/test_placement.py.

    python tests/deployments/multinode_scenario.py INPUT_DIR OUTPUT_DIR

Starts a fake multi-node cluster on this machine (`ray.cluster_utils.Cluster`: a head with no GPUs and two
worker nodes with 4 fake GPUs each), runs the whole pipeline (`pipeline.run.run`) with the whisper engine and a
TP=4 deployment (`deployment.gpus_per_replica=4`) that autoscales 1 -> 2 replicas, and watches the replicas
while it runs: their placement groups, the nodes of the replica actors, and what a task placed in each GPU
bundle sees (`ray.get_gpu_ids()`, `CUDA_VISIBLE_DEVICES`), as vLLM's tensor-parallel workers would.

The last line on stdout is `RESULT {json}`; the test asserts on it and on the Parquet in OUTPUT_DIR.

It is a separate process because the test session already holds an in-process Ray (the `ray_cluster`
fixture), and it uses its own RAY_TMPDIR so the cluster's address file (`ray_current_cluster`) and sockets
never reach other Ray users of this machine: a bare `ray.init()` elsewhere would otherwise join this cluster.
Never `AutoscalingCluster` here: it runs `ray stop --force`, which kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "placement-test"
GPUS_PER_NODE = 4
TP = 4

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Handles report their ongoing requests every 10 s by default; report every second so the autoscaler sees the
# load within the test's time. A Serve runtime knob (read by the handle's process), not a pipeline setting.
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")


def overrides(input_dir: str, output_dir: str) -> list[str]:
    """configs/local.yaml plus what this scenario needs, as `--set` assignments."""
    return [
        f"input.uri={input_dir}",
        f"output.uri={output_dir}",
        f"deployment.app_name={APP_NAME}",
        f"deployment.gpus_per_replica={TP}",
        # One replica to start, a second as soon as the handle reports more than one call in flight.
        "deployment.autoscaling={min_replicas: 1, max_replicas: 2, target_ongoing_requests: 1,"
        " upscale_delay_s: 0, downscale_delay_s: 600}",
        # One caller actor keeping 4 requests in flight: 4 ongoing requests against a target of 1. Decoding in
        # few large tasks keeps decoded items waiting for it even on a loaded machine: with many small tasks
        # the decode stage can become the bottleneck, the replica never has more than one call, and Serve,
        # rightly, does not scale.
        "resources.files_per_task=12",
        "resources.infer_actors=1",
        "resources.requests_in_flight=4",
        "resources.batch_size=2",
    ]


class Watcher(threading.Thread):
    """Polls Serve, the placement group table and the actor table while the pipeline runs."""

    def __init__(self, period_s: float = 0.5):
        super().__init__(daemon=True, name="watcher")
        self.period_s = period_s
        self.stop = threading.Event()
        self.start_time = time.monotonic()
        self.max_running = 0
        self.max_alive_actors = 0
        self.first_two_running_s: float | None = None
        self.timeline: list[tuple[float, int]] = []
        self.pgs: dict[str, dict] = {}  # placement group name (== replica actor name) -> what it looked like
        self.actors: dict[str, dict] = {}  # replica actor name -> node id, pid
        self.probes: dict[str, list[dict]] = {}  # placement group name -> one probe per GPU bundle
        self.pg_states: dict[str, list[tuple[float, str]]] = {}  # placement group name -> (time, state) changes
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep watching; report at the end
                self.errors.append(traceback.format_exc(limit=3))
            self.stop.wait(self.period_s)
        try:
            self.poll()
        except Exception:  # noqa: BLE001
            self.errors.append(traceback.format_exc(limit=3))

    def poll(self) -> None:
        import ray
        from ray import serve

        now = round(time.monotonic() - self.start_time, 1)
        status = serve.status().applications.get(APP_NAME)
        running = 0
        if status is not None:
            for deployment in status.deployments.values():
                running += deployment.replica_states.get("RUNNING", 0)
        if not self.timeline or self.timeline[-1][1] != running:
            self.timeline.append((now, running))
        self.max_running = max(self.max_running, running)
        if running >= 2 and self.first_two_running_s is None:
            self.first_two_running_s = now

        prefix = f"SERVE_REPLICA::{APP_NAME}#"
        alive = 0
        for info in ray._private.state.actors().values():
            if info["Name"].startswith(prefix) and info["State"] == "ALIVE":
                alive += 1
                self.actors[info["Name"]] = {"node_id": info["Address"]["NodeID"], "pid": info["Pid"]}
        self.max_alive_actors = max(self.max_alive_actors, alive)

        for pg_id, pg in ray.util.placement_group_table().items():
            if not pg["name"].startswith(prefix):
                continue
            states = self.pg_states.setdefault(pg["name"], [])
            if not states or states[-1][1] != pg["state"]:
                states.append((now, pg["state"]))
            if pg["state"] != "CREATED":
                continue
            if pg["name"] not in self.pgs:
                self.pgs[pg["name"]] = {
                    "id": pg_id, "strategy": pg["strategy"],
                    "bundles": [pg["bundles"][i] for i in sorted(pg["bundles"])],
                    "bundle_nodes": [pg["bundles_to_node_id"][i] for i in sorted(pg["bundles_to_node_id"])],
                }
            if pg["name"] not in self.probes:
                self.probes[pg["name"]] = self.probe_gpu_bundles(pg_id, self.pgs[pg["name"]]["bundles"])

    @staticmethod
    def probe_gpu_bundles(pg_id: str, bundles: list[dict]) -> list[dict]:
        """One zero-CPU, one-GPU task in each GPU bundle of the replica's group, as a TP worker would be placed.
        One after the other, so a node starts one worker process for all four."""
        import ray
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = PlacementGroup(PlacementGroupID.from_hex(pg_id))
        seen = []
        for index, bundle in enumerate(bundles):
            if not bundle.get("GPU"):
                continue
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)
            ref = _gpu_probe.options(num_cpus=0, num_gpus=1, scheduling_strategy=strategy).remote()
            seen.append({"bundle": index, **ray.get(ref, timeout=60)})
        return seen


def _gpu_probe_fn() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


_gpu_probe = None


def controller_lines() -> list[str]:
    """What the Serve controller logged about the app (its scaling decisions), to explain a failed check."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [line.split(" -- ", 1)[-1].strip()[:300] for path in sorted(logs.glob("controller_*.log"))
            for line in path.read_text(errors="replace").splitlines() if f"app='{APP_NAME}'" in line]


def shut_down(cluster) -> None:
    """Serve, this driver's Ray connection, then the cluster's nodes (a Serve that fails to stop is printed)."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001 - the cluster goes next anyway
        traceback.print_exc()
    ray.shutdown()
    cluster.shutdown()


def main(input_dir: str, output_dir: str) -> dict:
    global _gpu_probe
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from contract.config import TaskConfig, load_config
    from deployments.app import serving
    from pipeline.run import run

    timings: dict[str, float] = {}
    start = time.monotonic()
    # The head runs the Serve controller and Ray Data's tasks; the GPU nodes run the replicas (and, by Ray's
    # choice, some Ray Data tasks). CPUs are logical: this is a 2-core machine.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    watcher = None
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=GPUS_PER_NODE) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        _gpu_probe = ray.remote(_gpu_probe_fn)
        timings["cluster_up_s"] = round(time.monotonic() - start, 1)
        # No HTTP proxies: the pipeline calls the app through handles only.
        serve.start(proxy_location="Disabled")

        config = load_config(ROOT / "configs" / "local.yaml", overrides(input_dir, output_dir))
        config.tasks = [TaskConfig(name="transcribe", question="Please transcribe the audio."),
                        TaskConfig(name="again", question="Transcribe it once more.")]
        watcher = Watcher()
        watcher.start()
        run_start = time.monotonic()
        summary = run(config, serving)
        timings["run_s"] = round(time.monotonic() - run_start, 1)
        watcher.stop.set()
        watcher.join(timeout=30)
        return {
            "ok": True,
            "nodes": {
                "head": cluster.head_node.node_id,
                "gpu_nodes": [w.node_id for w in workers],
                "resources": {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]},
            },
            "replicas_running_max": watcher.max_running,
            "replica_actors_alive_max": watcher.max_alive_actors,
            "first_two_running_s": watcher.first_two_running_s,
            "timeline": watcher.timeline,
            "placement_groups": watcher.pgs,
            "replica_actors": watcher.actors,
            "gpu_probes": watcher.probes,
            "placement_group_states": watcher.pg_states,
            "controller_log": controller_lines(),
            "watcher_errors": watcher.errors,
            "summary": {"run_id": summary.run_id, "files": summary.files, "rows": summary.rows,
                        "errors": summary.errors, "wall_s": round(summary.wall_s, 1)},
            "app_left_running": APP_NAME in serve.status().applications,
            "timings": timings,
        }
    finally:
        if watcher is not None:
            watcher.stop.set()
        shut_down(cluster)
        timings["total_s"] = round(time.monotonic() - start, 1)


LOSS_APP = "node-loss-test"


def node_loss_main(input_dir: str, output_dir: str) -> dict:
    """Issue 15: a worker node holding the replica (and decode tasks, inference callers, blocks) is removed
    mid-run; the run must finish with every row. A head with no CPUs (as KubeRay's samples run it) holds the
    driver and its zero-CPU helpers; the two worker nodes hold everything else."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from contract.config import load_config
    from deployments.app import serving
    from pipeline.output import output_files
    from pipeline.run import run

    start = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=GPUS_PER_NODE) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        config = load_config(ROOT / "configs" / "local.yaml", [
            f"input.uri={input_dir}", f"output.uri={output_dir}", f"deployment.app_name={LOSS_APP}",
            f"deployment.gpus_per_replica={TP}", "deployment.num_replicas=1", "output.rows_per_file=1",
            "resources.files_per_task=1", "resources.batch_size=1", "resources.requests_in_flight=2",
            "resources.infer_actors=2"])
        lost: dict = {}

        def remove_the_replicas_node() -> None:
            try:
                deadline = time.monotonic() + 240
                while not output_files(output_dir) and time.monotonic() < deadline:
                    time.sleep(0.2)
                prefix = f"SERVE_REPLICA::{LOSS_APP}#"
                actors = [a for a in ray._private.state.actors().values() if a["State"] == "ALIVE"]
                (replica,) = [a for a in actors if a["Name"].startswith(prefix)]
                node_id = replica["Address"]["NodeID"]
                (node,) = [w for w in workers if w.node_id == node_id]
                lost.update(node_id=node_id, rows_before=len(output_files(output_dir)),
                            actors=sorted(a["ActorClassName"] for a in actors
                                          if a["Address"]["NodeID"] == node_id))
                cluster.remove_node(node)
                lost["removed_at_s"] = round(time.monotonic() - start, 1)
            except Exception:  # noqa: BLE001 - reported on the RESULT line
                lost["error"] = traceback.format_exc(limit=5)

        remover = threading.Thread(target=remove_the_replicas_node, daemon=True)
        remover.start()
        summary = run(config, serving)
        remover.join(timeout=60)
        return {
            "ok": True, "lost": lost, "gpu_nodes": [w.node_id for w in workers],
            "summary": {"run_id": summary.run_id, "files": summary.files, "rows": summary.rows,
                        "errors": summary.errors, "wall_s": round(summary.wall_s, 1)},
            "alive_nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
            "app_left_running": LOSS_APP in serve.status().applications,
            "timings": {"total_s": round(time.monotonic() - start, 1)},
        }
    finally:
        shut_down(cluster)


if __name__ == "__main__":
    scenario = main
    if sys.argv[1:2] == ["--node-loss"]:
        scenario = node_loss_main
        del sys.argv[1]
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} [--node-loss] INPUT_DIR OUTPUT_DIR")
    sys.path.insert(0, str(ROOT))
    own_tmp = "RAY_TMPDIR" not in os.environ
    if own_tmp:
        # Short: Ray's unix socket paths live under it.
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")
    result: dict = {"ok": False}
    try:
        result = scenario(sys.argv[1], sys.argv[2])
    except BaseException as e:  # noqa: BLE001 - reported on the RESULT line
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        if own_tmp and result.get("ok"):
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
        elif own_tmp:
            print(f"ray logs kept in {os.environ['RAY_TMPDIR']}", file=sys.stderr)
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)
