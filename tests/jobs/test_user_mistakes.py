"""Ordinary mistakes, seen from the user's side: each answer says where the mistake is, and a run with nothing
to do leaves the last real run's report in place."""

import subprocess
import sys

from pipeline.report import REPORTS
from tests.conftest import ROOT


def job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/transcribe.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("input:\n  uri: samples/audio\n  extensions: [wav, flac\noutput:\n  uri: out\n")
    done = job("--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"config error: {config}:4:7: not valid YAML: expected ',' or ']', but got ':'"]


def test_a_set_mistake_names_the_set_not_the_config_file():
    done = job("--set", "resources.batch_size=0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "config error: --set resources.batch_size: resources.batch_size: Input should be greater than or equal to 1"]
    done = job("--set", "input.extensions=[wav")
    assert done.returncode == 2 and "local.yaml" not in done.stderr
    assert done.stderr.startswith("config error: --set input.extensions: not a valid YAML value: ")


def test_a_run_with_nothing_to_do_keeps_the_latest_report(tmp_path):
    (tmp_path / "in").mkdir()
    latest = tmp_path / "out" / REPORTS / "latest.html"
    latest.parent.mkdir(parents=True)
    latest.write_text("the last run that answered something")
    done = job("--set", f"input.uri={tmp_path}/in", "--set", f"output.uri={tmp_path}/out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 files" in done.stdout
    assert latest.read_text() == "the last run that answered something"
