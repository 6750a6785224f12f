"""Metrics reach Prometheus through Ray's metrics endpoint: the pipeline's, recorded by the inference actors
from the rows they made, and a replica's, per replica."""

import time
import urllib.request

import pyarrow.dataset as pads
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.config import load_config
from deployments.app import serving
from pipeline.run import run
from tests.conftest import samples_in


def scrape() -> dict[str, list]:
    """Every sample on the node's metrics endpoint, by sample name."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(condition, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape()
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, {name: [(x.labels, x.value) for x in found] for name, found in
                                             samples.items() if "audio_" in name and "bucket" not in name}
        time.sleep(1)


def test_pipeline_metrics_count_what_the_run_wrote(whisper_app, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    samples_in(inputs, "greeting.wav", "lecture.wav", "story.ogg")
    (inputs / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    # A task name of its own, so other tests' runs in this session do not add to the series looked at.
    # One request per call, one call at a time: the inference actor lives a few seconds. Ray exports a
    # worker's metrics every 10 s and at its exit, but a worker gone within a second or two of starting
    # can lose them, which a real run's long-lived actors do not meet.
    task = "metrics-probe"
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app,
                                "resources.batch_size=1", "resources.requests_in_flight=1",
                                f"tasks=[{{name: {task}, question: Please transcribe the audio.}}]"])
    run(config, serving)
    rows = pads.dataset(str(out)).to_table().to_pylist()
    answered = [r for r in rows if r["finish_reason"] is not None]
    assert len(answered) == 3  # one request per recording (the lecture's two items together)

    requests = "ray_audio_pipeline_requests_total"
    samples = wait_for(lambda s: total(s, requests, task=task) >= len(answered)
                       and total(s, "ray_audio_pipeline_errors_total", WorkerId=worker(s, task)) >= 1)
    ours = {"WorkerId": worker(samples, task)}  # Ray's label for the process: this run's inference actor
    assert total(samples, requests, task=task, finish_reason="stop", model="whisper-tiny.en") == len(answered)
    assert total(samples, "ray_audio_pipeline_prompt_tokens_total", task=task) == \
        sum(r["prompt_tokens"] for r in answered)
    assert total(samples, "ray_audio_pipeline_completion_tokens_total", task=task) == \
        sum(r["completion_tokens"] for r in answered)
    assert total(samples, "ray_audio_pipeline_request_latency_seconds_count", task=task) == len(answered)
    assert total(samples, "ray_audio_pipeline_errors_total", **ours) == \
        total(samples, "ray_audio_pipeline_errors_total", **ours, stage="decode", error_class="DecodeError") == 1
    assert total(samples, "ray_audio_pipeline_audio_seconds_total", **ours, model="whisper-tiny.en") == \
        pytest.approx(sum(r["duration_s"] for r in answered), abs=0.01)
    assert total(samples, "ray_audio_pipeline_call_latency_seconds_count", **ours) == len(answered)
    assert "ray_audio_pipeline_requests_in_flight" in samples


def worker(samples: dict, task: str) -> str | None:
    found = {s.labels["WorkerId"] for s in samples.get("ray_audio_pipeline_requests_total", [])
             if s.labels.get("task") == task}
    assert len(found) <= 1, found
    return found.pop() if found else None


def test_replica_metrics_are_per_replica(ray_cluster):
    import asyncio

    from ray import serve

    from contract.messages import GenerationResult
    from deployments.metrics import ReplicaMetrics

    @serve.deployment(name="Probe", ray_actor_options={"num_cpus": 0})
    class Probe:
        def __init__(self):
            self.metrics = ReplicaMetrics("probe-model")
            self.go = asyncio.Event()

        async def answer(self, request_id: str) -> GenerationResult:
            async def engine():
                await self.go.wait()  # in flight until the test has seen it so
                if request_id == "bad":
                    return GenerationResult.failure(request_id, TimeoutError("slow"), retryable=True)
                return GenerationResult(request_id, answer="ok", finish_reason="stop", prompt_tokens=7,
                                        completion_tokens=3)

            return await self.metrics.measure(engine())

        def release(self) -> None:
            self.go.set()

    handle = serve.run(Probe.bind(), name="test-metrics-probe", route_prefix=None)
    try:
        responses = [handle.answer.remote(i) for i in ("a", "b", "bad")]
        in_flight = wait_for(lambda s: total(s, "ray_audio_serve_requests_in_flight", model="probe-model") == 3)
        assert {s.labels["replica"] for s in in_flight["ray_audio_serve_requests_in_flight"]
                if s.labels.get("model") == "probe-model"}  # Serve's replica label is there
        handle.release.remote().result()
        assert [r.result().answer for r in responses] == ["ok", "ok", None]
        done = wait_for(lambda s: total(s, "ray_audio_serve_requests_total", model="probe-model") == 3
                        and total(s, "ray_audio_serve_requests_in_flight", model="probe-model") == 0)
    finally:
        serve.delete("test-metrics-probe")
    counted = {s.labels["outcome"]: s.value for s in done["ray_audio_serve_requests_total"]
               if s.labels.get("model") == "probe-model"}
    assert counted == {"ok": 2, "TimeoutError": 1}
    assert total(done, "ray_audio_serve_prompt_tokens_total", model="probe-model") == 14
    assert total(done, "ray_audio_serve_completion_tokens_total", model="probe-model") == 6
    assert total(done, "ray_audio_serve_request_latency_seconds_count", model="probe-model", outcome="ok") == 2
    samples = done["ray_audio_serve_requests_total"]
    assert all(s.labels.get("application") == "test-metrics-probe" and s.labels.get("deployment") == "Probe"
               for s in samples if s.labels.get("model") == "probe-model")


class Recorded:
    """Stands in for one Ray metric, keeping what was recorded."""

    def __init__(self):
        self.calls = []

    def inc(self, value=1, tags=None):
        self.calls.append((value, tags))

    set = observe = inc


def test_a_streamed_answer_counts_once_with_its_outcome():
    import asyncio

    from contract.messages import GenerationResult
    from deployments.engines.base import StreamDelta
    from deployments.metrics import ReplicaMetrics

    metrics = ReplicaMetrics("m")
    for name in ("in_flight", "requests", "latency", "prompt_tokens", "completion_tokens"):
        setattr(metrics, name, Recorded())

    async def pieces():
        yield StreamDelta("hel")
        yield StreamDelta("lo", GenerationResult("r", answer="hello", finish_reason="stop", prompt_tokens=5,
                                                 completion_tokens=2))

    async def read(limit=None):
        stream = metrics.measure_stream(pieces())
        got = []
        async for piece in stream:
            got.append(piece.text)
            if limit and len(got) == limit:
                await stream.aclose()  # the caller went away
                break
        return got

    assert asyncio.run(read()) == ["hel", "lo"]
    assert asyncio.run(read(limit=1)) == ["hel"]
    assert [tags["outcome"] for _, tags in metrics.requests.calls] == ["ok", "cancelled"]
    assert [v for v, _ in metrics.in_flight.calls] == [1, 0, 1, 0]
    assert metrics.prompt_tokens.calls == [(5, {"model": "m"})]
