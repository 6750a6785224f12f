"""Shared fixtures: one local Ray cluster per test session, sample audio and its transcripts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "audio"
STEP_AUDIO_R1_TEMPLATE = ROOT / "tests" / "data" / "step_audio_r1_chat_template.jinja"  # the official one

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Credentials for the loopback S3 test server only, set before Ray starts so its workers see them too.
for key, value in {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-do-not-log",
                   "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ[key] = value
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs Ray (start-up costs seconds).

    It advertises more CPUs than the machine has so several Serve apps and Ray Data stages of different
    tests fit at once; the pipeline's own fractional CPUs are still what keeps one job from deadlocking.
    """
    import ray

    # Metrics exported every second (default 10 s): an inference actor that ends seconds after it starts,
    # as in these small runs, still gets its counts out before it exits.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    from ray import serve

    # Serve with its HTTP proxy, on a free loopback port, for the HTTP tests; a pipeline run started first would
    # otherwise start Serve without one (the batch job needs only the handle).
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    yield ray

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto's) on loopback: its URL and a boto3 client."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url, boto3.client("s3", endpoint_url=url)
    server.stop()


@pytest.fixture(scope="session")
def whisper_app(ray_cluster):
    """A whisper Serve app shared by the session's pipeline runs; returns the `--set` overrides that reuse it."""
    from ray import serve

    from contract.config import load_config
    from deployments.app import application

    name = "test-whisper"
    serve.run(application(load_config(None, [f"deployment.app_name={name}"])), name=name, route_prefix=None)
    yield [f"deployment.app_name={name}", "deployment.reuse_running=true"]
    if name in serve.status().applications:
        serve.delete(name)


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    return json.loads((ROOT / "samples" / "transcripts.json").read_text())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference length, ignoring case and punctuation."""
    def words(text: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() or c == "'" else " " for c in text).split()

    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


@pytest.fixture(scope="session")
def tiny_qwen2_audio(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2-Audio model for the real vLLM engine on CPU (tests/tiny_model.py), built once
    per session (about 10 s, offline). Also exported as TINY_MODEL_PATH, which configs/tiny-vllm.yaml reads:
    `load_config(ROOT / "configs" / "tiny-vllm.yaml")` after requesting this fixture."""
    return built_model(tmp_path_factory, "tests.tiny_model", "TINY_MODEL_PATH")


@pytest.fixture(scope="session")
def tiny_step_audio(tmp_path_factory) -> Path:
    """The tiny random-weight Step-Audio-R1 checkpoint of the real shape (tests/tiny_step_audio.py), built once per
    session (seconds, offline). Also exported as TINY_STEP_AUDIO_PATH, which configs/tiny-step-audio.yaml reads."""
    return built_model(tmp_path_factory, "tests.tiny_step_audio", "TINY_STEP_AUDIO_PATH")


def built_model(tmp_path_factory, module: str, env: str) -> Path:
    """A tiny model built offline by `python -m <module> PATH` and exported as `env` for the configs that read it.
    In a subprocess: keeps torch and transformers out of the test process, which also drives Ray."""
    import subprocess
    import sys

    path = tmp_path_factory.mktemp(module.rsplit(".", 1)[1])
    subprocess.run([sys.executable, "-m", module, str(path)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    os.environ[env] = str(path)
    return path


@pytest.fixture(scope="session")
def step_audio_probe(tiny_step_audio, tmp_path_factory) -> dict:
    """One run of the real vLLM engine with the step_audio_vllm plugin on the tiny checkpoint, answering what the
    step_audio tests ask (tests/step_audio_probe.py: token counts, refusals, log-prob parity, strict loading)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("step-audio-probe") / "probe.json"
    done = subprocess.run([sys.executable, "-m", "tests.step_audio_probe", str(tiny_step_audio), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(out.read_text())


def request_rows(*ids: str, task: str = "t", audio: np.ndarray | None = None):
    """Request rows (pipeline.rows.REQUEST_SCHEMA) as pipeline.pack makes them, one per item id, each asking
    `task` about `audio` (default: 0.1 s of silence) as an item of its own."""
    import pyarrow as pa

    from pipeline.rows import REQUEST_SCHEMA

    samples = (np.zeros(1600, np.float32) if audio is None else audio).astype(np.float32).tobytes()
    seconds = len(samples) / 4 / 16000
    return pa.Table.from_pylist([{"item_id": i, "source_uri": f"/{i}.wav", "segment_index": 0, "segment_count": 1,
                                  "start_s": 0.0, "end_s": seconds, "audio": [samples], "task": task, "prompt": "q",
                                  "question": "q", "scope": "item", "request_index": 0, "request_count": 1,
                                  "recording_s": seconds} for i in ids], schema=REQUEST_SCHEMA)


def serve_http_url() -> str:
    """Serve's HTTP address in this Ray session: started on a free loopback port unless Serve already runs
    (port 8000 may belong to someone else on a shared machine)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    options = _get_global_client().http_config
    return f"http://{options.host}:{options.port}"


def cmdline(process) -> str:
    """A process's command line as one string (Ray and vLLM retitle theirs); empty once it is gone or not ours."""
    try:
        return " ".join(process.cmdline())
    except Exception:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def official_step_audio_r1(messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Step-Audio-R1's official chat template rendered as transformers' apply_chat_template renders it."""
    import jinja2.ext
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    return env.from_string(STEP_AUDIO_R1_TEMPLATE.read_text()).render(
        messages=messages, tools=None, add_generation_prompt=add_generation_prompt)


def tone(seconds: float, freq: float = 220.0, seed: int = 0):
    """A quiet tone plus noise at 16 kHz: something for an audio encoder to chew on, different per seed."""

    t = np.arange(int(round(seconds * 16000))) / 16000
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return (0.1 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def samples_in(folder: Path, *names: str) -> Path:
    """`folder`, made, holding copies of the named sample files under their own names."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLES / name, folder / name)
    return folder


def joined_samples(path: Path, times: int = 3, gap_s: float = 0.5) -> str:
    """Writes the sample clips joined into one WAV at `path` (the set `times` over, `gap_s` of silence between
    clips: about 3.5 minutes of real speech for times=3) and returns its transcript."""
    import soundfile

    from contract.audio import decode

    texts = json.loads((ROOT / "samples" / "transcripts.json").read_text())
    names = sorted(texts)
    gap = np.zeros(int(gap_s * 16000), np.float32)
    pieces = [piece for _ in range(times) for name in names
              for piece in (decode((SAMPLES / name).read_bytes()), gap)]
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.concatenate(pieces), 16000, subtype="PCM_16")
    return " ".join(texts[name] for _ in range(times) for name in names)
