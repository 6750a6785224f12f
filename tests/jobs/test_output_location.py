"""An output location the job cannot write is found before Ray starts: one line naming it and why, exit 2."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def job(*overrides: str, env: dict | None = None, user: list[str] = ()) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([*user, sys.executable, "jobs/transcribe.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_read_only_folder_is_one_line_before_ray(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    # root writes anywhere: run the job as nobody then, for whom the folder is read-only as for any user
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    done = job(f"output.uri={locked}/answers", user=user, env={"RAY_TMPDIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [f"error: output '{locked}/answers' is not writable: Permission denied"]
    assert not any(tmp_path.glob("session_*"))  # Ray never started
    assert list(locked.iterdir()) == []


def test_missing_bucket_is_one_line_before_ray(s3, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="present")
    done = job("output.uri=s3://absent/answers", env={"AWS_ENDPOINT_URL": url, "RAY_TMPDIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: output 's3://absent/answers' is not writable: "), line
    assert not any(tmp_path.glob("session_*"))
    assert "absent" not in [b["Name"] for b in client.list_buckets()["Buckets"]]  # nor made by the check
