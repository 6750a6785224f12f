"""A default run as a user sees it: the summary on stdout, our own few lines on stderr, Ray's logs in a file named
in one line; no deprecation warnings; Serve started by the job has no HTTP proxy; fds restored after main()."""

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# The job as `python jobs/transcribe.py ARGS` runs it, and besides: how many Serve HTTP proxies run once the app
# is up (written to argv[1]), and a line on each of stdout and stderr after main() returns.
WATCHED_JOB = """
import json, sys
import deployments.app as app
from ray import serve
start_app = app.start_app
def watched(*args):
    started = start_app(*args)
    with open(sys.argv[1], "w") as f:
        json.dump(len(serve.status().proxies), f)
    return started
app.start_app = watched
from jobs.transcribe import main
code = main(sys.argv[2:])
print("stdout after main")
print("stderr after main", file=sys.stderr)
sys.exit(code)
"""
OURS = re.compile(r"^(\S+ \S+ progress: .*|\S+ \S+ INFO pipeline\.\w+: .*|ray logs: (\S+)|stderr after main)$")


def test_a_default_run_is_quiet_and_starts_no_proxy(tmp_path):
    proxies = tmp_path / "proxies.json"
    done = subprocess.run([sys.executable, "-c", WATCHED_JOB, str(proxies), "--set", f"output.uri={tmp_path}/out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, after = done.stdout.strip().splitlines()
    assert summary.startswith("run ") and after == "stdout after main"
    lines = done.stderr.strip().splitlines()
    assert all(OURS.match(line) for line in lines), [line for line in lines if not OURS.match(line)]
    assert len(lines) <= 8, lines
    (log,) = [Path(m.group(2)) for m in map(OURS.match, lines) if m.group(2)]
    ray_lines = log.read_text()
    assert "core_worker" in ray_lines or "INFO" in ray_lines  # Ray's own lines went there
    assert "Deprecat" not in done.stderr + ray_lines
    assert json.loads(proxies.read_text()) == 0
    log.unlink()
