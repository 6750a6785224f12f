import subprocess
import sys
import time

import pytest

from contract.config import ConfigError, load_config
from tests.conftest import ROOT


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_is_local_whisper():
    config = load_config()
    assert config.engine.kind == "whisper"
    assert config.input.uri == "samples/audio"
    assert config.deployment.num_cpus < 1  # fractional: a 2-core machine must not deadlock


def test_overrides_are_yaml_typed():
    config = load_config(None, ["resources.batch_size=3", "output.uri=s3://b/out", "input.extensions=[wav]"])
    assert config.resources.batch_size == 3
    assert config.output.uri == "s3://b/out"
    assert config.input.extensions == ["wav"]


@pytest.mark.parametrize(("text", "expected"), [
    ("inptu:\n  uri: x\n", "inptu: unknown field"),
    ("input:\n  uri: x\n  extention: [wav]\n", "input.extention: unknown field"),
    ("resources:\n  batch_size: many\n", "resources.batch_size: Input should be a valid integer"),
    ("resources:\n  batch_size: 0\n", "resources.batch_size: Input should be greater than or equal to 1"),
    ("resources:\n  max_concurrent_batches: 4\n", "resources: Value error, max_concurrent_batches is gone: requests "
     "are sent one by one now; set resources.requests_in_flight"),
    ("engine:\n  kind: tensorrt\n", "engine.kind: Input should be 'whisper', 'vllm' or 'openai'"),
    ("engine:\n  family: gpt\n", "engine: Value error, family 'gpt' is not one of"),
    ("tasks: []\n", "tasks: List should have at least 1 item"),
    ("tasks:\n  - name: a\n    question: q\n    prefil: off\n", "tasks.0.prefil: unknown field"),
    ("engine:\n  family: qwen2_audio\ntasks:\n  - name: a\n",
     "tasks[0] (a): question is required: model family qwen2_audio answers the task's question"),
    ("- just a list\n", "expected a mapping"),
    ("input: [unclosed\n", "not valid YAML"),
])
def test_mistakes_name_the_field(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_names_the_field():
    with pytest.raises(ConfigError, match="deployment.num_cpus: Input should be greater than 0"):
        load_config(None, ["deployment.num_cpus=0"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["output.uri"])


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT_URI", "/data/out")
    assert load_config(write(tmp_path, "output:\n  uri: ${OUT_URI}\n")).output.uri == "/data/out"


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_typo_on_command_line_answers_fast_in_one_line():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "jobs/transcribe.py", "--set", "inptu.uri=x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - start < 20
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line == "config error: --set inptu.uri: inptu: unknown field (typo?)"
    assert "Traceback" not in done.stderr
    assert "ray" not in done.stdout.lower()


def test_each_request_samples_with_its_own_seed_made_from_the_tasks():
    from contract.config import SamplingConfig

    task = SamplingConfig(temperature=1.0, seed=7)
    seeds = [task.for_request(f"a.wav/{i}/t").seed for i in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**31 for s in seeds)  # apart, and an int any engine takes
    assert task.for_request("a.wav/0/t") == SamplingConfig(temperature=1.0, seed=seeds[0])  # the rest unchanged
    assert task.for_request("a.wav/0/t").seed == seeds[0]  # a request sent again draws the same numbers
    assert SamplingConfig(temperature=1.0, seed=8).for_request("a.wav/0/t").seed != seeds[0]
    assert SamplingConfig(temperature=1.0).for_request("a.wav/0/t").seed is None  # unseeded stays unseeded
