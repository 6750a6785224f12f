"""The app's lifetime as the batch job sees it: replicas that never start stop the job at a bound; an app the job
reused is never deleted by it. (An engine whose model path does not exist, and an app whose job is stopped:
tests/jobs/test_submitted.py, on a cluster of its own.)"""

from __future__ import annotations

import time

import pytest

from contract.config import load_config
from deployments.app import EngineStartFailed, error_line, serving


def gone(name: str, within_s: float) -> bool:
    from ray import serve

    deadline = time.monotonic() + within_s
    while name in serve.status().applications:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_replicas_that_never_get_their_resources_stop_the_start_at_the_timeout(ray_cluster):
    config = load_config(None, ["deployment.app_name=test-no-gpus", "deployment.gpus_per_replica=4",
                                "deployment.start_timeout_s=8"])
    started = time.monotonic()
    with pytest.raises(EngineStartFailed, match=r"not running within deployment.start_timeout_s=8 s: "):
        with serving(config):
            pytest.fail("no node has GPUs")
    assert time.monotonic() - started < 60
    assert gone("test-no-gpus", 60)


def test_a_reused_app_is_left_running(whisper_app):
    from ray import serve

    config = load_config(None, whisper_app)
    with serving(config) as handle:
        assert handle.info.remote().result().model_name == "whisper-tiny.en"
    assert config.deployment.app_name in serve.status().applications


def test_error_line_is_the_raised_exception_of_a_traceback():
    message = ("The deployment failed to start 3 times in a row. See controller logs for details. Error:\n"
               "RuntimeError: Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
               "OSError: no model at /x\n")
    assert error_line(message) == "OSError: no model at /x"
    assert error_line("Deployment has 1 replicas that have taken more than 30s to be scheduled.") == \
        "Deployment has 1 replicas that have taken more than 30s to be scheduled."
