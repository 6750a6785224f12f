"""Losing a whole worker node mid-run (issue 15): the node holding the replica, and with it decode tasks,
inference callers and blocks, is removed from a fake multi-node cluster (`ray.cluster_utils.Cluster`, run by
tests/deployments/multinode_scenario.py --node-loss in a process of its own). The run finishes, and every key
is in the output exactly once."""

from __future__ import annotations

from tests.deployments.test_placement import run_scenario
from tests.pipeline.test_resume import assert_one_outcome_per_key, copy_samples


def test_losing_the_replicas_node_mid_run_loses_no_row_and_doubles_none(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    files = copy_samples(inputs, copies=2)
    result, wall_s = run_scenario("--node-loss", str(inputs), str(out))
    print(f"node loss: {wall_s:.0f} s wall, lost {result['lost']}, summary {result['summary']}")
    lost = result["lost"]
    assert "error" not in lost, lost["error"]
    assert lost["node_id"] in result["gpu_nodes"] and lost["node_id"] not in result["alive_nodes"]
    assert "ServeReplica:node-loss-test:EngineServer" in lost["actors"], lost["actors"]
    assert 0 < lost["rows_before"] < files  # removed mid-run
    written = assert_one_outcome_per_key(out, inputs)
    assert result["summary"]["errors"] == 0 and result["summary"]["rows"] == len(written)
    assert not any(r["error_class"] for r in written)
    assert not result["app_left_running"]
