"""The Serve app with the embedded whisper engine, called through its handle as the pipeline calls it."""

import time

import numpy as np
import pytest

from contract.audio import decode
from contract.config import load_config
from contract.messages import GenerationRequest
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def start_app(ray_cluster):
    from ray import serve

    from deployments.app import application

    names = []

    def start(name, *overrides):
        names.append(name)
        config = load_config(None, [f"deployment.app_name={name}", *overrides])
        return serve.run(application(config), name=name, route_prefix=None)

    yield start
    for name in names:
        serve.delete(name)


def test_rejected_and_timed_out_requests_are_results(start_app):
    clip = decode((SAMPLES / "greeting.wav").read_bytes())
    handle = start_app("test-server-timeout", "deployment.request_timeout_s=0.001")
    too_long = GenerationRequest("long", [np.zeros(31 * 16000, np.float32)], "Transcribe.")
    slow = GenerationRequest("slow", [clip], "Transcribe.")
    long_result, slow_result = [handle.generate_one.remote(r).result(timeout_s=60) for r in (too_long, slow)]
    assert long_result.error_class == "RequestRejected" and not long_result.retryable
    assert "31.00 s, over whisper's 30 s" in long_result.error  # the shared check_item_length's wording
    assert slow_result.error_class == "RequestTimeout" and slow_result.retryable
    assert slow_result.answer is None and slow_result.finish_reason == "error"


def test_answers_requests_sent_together(start_app, transcripts):
    from tests.conftest import word_error_rate

    handle = start_app("test-server-batch")
    names = ["greeting.wav", "story.ogg", "note.m4a"]
    requests = [GenerationRequest(n, [decode((SAMPLES / n).read_bytes())], "Transcribe.") for n in names]
    calls = [handle.generate_one.remote(r) for r in requests]
    results = [c.result(timeout_s=120) for c in calls]
    assert [r.request_id for r in results] == names
    for name, r in zip(names, results):
        assert r.error_class is None and word_error_rate(transcripts[name], r.answer) <= 0.3
    assert handle.info.remote().result().max_item_s == 30.0


def test_stalled_engine_fails_its_health_check_and_is_replaced(start_app):
    import ray

    def replicas():
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if "test-server-stall" in a["name"] and "EngineServer" in a["name"]}

    # Any request outlasts a 1 ms stall limit, so the health check during it fails.
    handle = start_app("test-server-stall", "deployment.stall_timeout_s=0.001", "deployment.health_check_period_s=1")
    before = replicas()
    long_clip = decode((SAMPLES / "lecture.wav").read_bytes())[: 29 * 16000]
    calls = [handle.generate_one.remote(GenerationRequest(f"r{i}", [long_clip], "Transcribe.")) for i in range(4)]
    deadline = time.time() + 90
    while replicas() in (before, set()) and time.time() < deadline:
        time.sleep(0.5)
    assert replicas() and replicas() != before
    for call in calls:
        call.cancel()
