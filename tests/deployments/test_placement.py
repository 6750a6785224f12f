"""Multi-node placement with fake GPUs (issue 3 item 7).

Two worker nodes with 4 fake GPUs each (`ray.cluster_utils.Cluster`): a TP=4 deployment's replica takes a
placement group of 1 CPU bundle + 4 GPU bundles, all on one node; under load Serve scales 1 -> 2 replicas, the
second on the other node; and the pipeline still writes every row. The engine is whisper on CPU: placement and
scaling are what is checked. The scenario runs in its own process (tests/deployments/multinode_scenario.py)
because the test session may already hold an in-process Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from contract.config import load_config
from contract.formats import get_format
from pipeline.prepare import prepare_file
from pipeline.sources import list_audio
from tests.conftest import ROOT, SAMPLES

SCRIPT = Path(__file__).with_name("multinode_scenario.py")
COPIES = 6  # of the sample set: enough load to outlast the second replica's start-up (~15-45 s here)
TASKS = ("transcribe", "again")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("placement-in")
    for copy in range(COPIES):
        for f in SAMPLES.iterdir():
            shutil.copy(f, inputs / f"c{copy}_{f.name}")
    out = tmp_path_factory.mktemp("placement-out")
    result, wall_s = run_scenario(str(inputs), str(out))
    print(f"scenario: {wall_s:.0f} s wall, timings {result['timings']}, replicas {result['timeline']}")
    return result, inputs, out


def run_scenario(*args: str, timeout_s: float = TIMEOUT_S) -> tuple[dict, float]:
    """tests/deployments/multinode_scenario.py with `args`, in a process of its own: its RESULT and wall time."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    # Own session: on a timeout the whole scenario (its Ray nodes included) is ended, and nothing else.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"scenario did not finish in {timeout_s} s:\n{output[-5000:]}")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line (exit {proc.returncode}):\n{output[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert proc.returncode == 0 and result["ok"], f"{result.get('error')}\n{output[-5000:]}"
    return result, time.monotonic() - start


def test_each_replica_holds_one_cpu_and_four_gpu_bundles_on_one_node(scenario):
    result, _, _ = scenario
    gpu_nodes = set(result["nodes"]["gpu_nodes"])
    num_cpus = load_config(None).deployment.num_cpus
    assert result["placement_groups"], "no replica placement group was seen"
    for name, pg in result["placement_groups"].items():
        assert pg["strategy"] == "STRICT_PACK", name
        assert pg["bundles"] == [{"CPU": num_cpus}] + [{"GPU": 1.0}] * 4, name
        assert len(set(pg["bundle_nodes"])) == 1, (name, pg["bundle_nodes"])
        (node,) = set(pg["bundle_nodes"])
        assert node in gpu_nodes, name
        # The replica actor itself runs in its group's first bundle, on that node.
        assert result["replica_actors"][name]["node_id"] == node, name


def test_the_gpu_bundles_give_gpus_0_to_3_of_the_replicas_node(scenario):
    result, _, _ = scenario
    for name, pg in result["placement_groups"].items():
        probes = result["gpu_probes"][name]
        assert [p["bundle"] for p in probes] == [1, 2, 3, 4], name
        assert {p["node_id"] for p in probes} == set(pg["bundle_nodes"]), name
        assert sorted(g for p in probes for g in p["gpu_ids"]) == ["0", "1", "2", "3"], probes
        for p in probes:
            assert p["cuda_visible_devices"] == ",".join(p["gpu_ids"]), p


def test_serve_scaled_from_one_to_two_replicas_on_different_nodes(scenario):
    result, _, _ = scenario
    running = [n for _, n in result["timeline"] if n]
    why = "\n".join([f"replicas running: {result['timeline']}",
                     f"placement groups: {result['placement_group_states']}", *result["controller_log"]])
    assert running[0] == 1, why  # started with one replica ...
    assert result["replicas_running_max"] == 2, why  # ... and had two at the peak
    assert result["replica_actors_alive_max"] == 2
    assert len(result["placement_groups"]) == 2 and len(result["replica_actors"]) == 2
    nodes = {result["replica_actors"][name]["node_id"] for name in result["placement_groups"]}
    assert nodes == set(result["nodes"]["gpu_nodes"])  # one replica per GPU node
    assert not result["app_left_running"]
    assert not result["watcher_errors"], result["watcher_errors"]


def test_occupancy_holds_the_samples_of_every_replica_that_ran(scenario):
    """The app's one occupancy log took both replicas' samples, the second's from the node Serve scaled onto."""
    result, _, out = scenario
    occupancy = json.loads((out / "_reports" / result["summary"]["run_id"] / "run.json").read_text())["occupancy"]
    # Replica-seconds by Serve's own count of running replicas over the run, as the watcher saw it.
    timeline = result["timeline"] + [(result["timings"]["run_s"], 0)]
    running_s = sum(n * (end - t) for (t, n), (end, _) in zip(timeline, timeline[1:]))
    print(f"occupancy {occupancy}; replica-seconds by Serve's status {running_s:.1f}")
    assert 0 < occupancy["mean"] <= 1 and 0 <= occupancy["under_90"] <= 1
    # Less the time from the run's read of the log to the app's deletion; plus a second or so each before Serve
    # calls a replica running (it samples from its constructor's end). A replica missing would take tens of seconds.
    assert running_s - 10 <= occupancy["replica_s"] <= running_s + 5


def test_output_has_one_row_per_recording_and_task_and_nothing_else(scenario):
    result, inputs, out = scenario
    config = load_config(None)  # the scenario's base config
    options = {"max_item_s": get_format(config.engine.family).max_item_s, "search_s": config.segment.search_s,
               "max_duration_s": config.audio.max_duration_s}
    expected = set()
    sources = list(list_audio(str(inputs), config.input.extensions))
    assert len(sources) == COPIES * len(list(SAMPLES.iterdir()))
    for source in sources:
        items = prepare_file(source.as_row(), **options)
        assert items and "error_class" not in items[0], source
        # Scope recording: one row per file and task, over the whole file (whisper hears it in one request).
        expected |= {(source.source_uri, None, items[0]["start_s"], items[-1]["end_s"], task) for task in TASKS}
    assert len(expected) == len(sources) * len(TASKS)

    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    keys = [(r["source_uri"], r["segment_index"], r["start_s"], r["end_s"], r["task"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert set(keys) == expected
    for r in rows:
        assert r["error_class"] is None, (r["source_uri"], r["error"])
        assert r["answer"] and r["finish_reason"] == "stop" and r["model"] == "whisper-tiny.en"
    assert {r["run_id"] for r in rows} == {result["summary"]["run_id"]}
    assert result["summary"]["rows"] == len(expected) and result["summary"]["errors"] == 0
    assert result["summary"]["files"] == len(sources)
