"""Checking that the output location can be written, before Ray or any engine starts.

A wrong bucket, a read-only mount or a missing permission is then one line at start, instead of an error after
all the inference, when every answer is lost. The check writes an empty probe under the job's own `_tmp/`
folder and removes it: the same operations the job uses to commit its files.
"""

from __future__ import annotations

import posixpath
import uuid

from pipeline.staging import STAGING
from pipeline.storage import open_fs


class OutputNotWritable(Exception):
    """The output location cannot be opened or written; its message is one line naming it and why."""


def _reason(error: BaseException) -> str:
    """Why, in a few words: the OS's or the store's message, without the probe's path."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return reason.splitlines()[0][:300]


def check_writable(uri: str, storage: dict | None = None) -> None:
    """Raise OutputNotWritable unless a file can be written and removed at `uri`."""
    try:
        fs, root = open_fs(uri, storage)
    except (ValueError, ImportError) as e:
        raise OutputNotWritable(f"output {uri!r} cannot be opened: {_reason(e)}") from e
    probe = posixpath.join(root, STAGING, f"writable-{uuid.uuid4().hex}.probe")
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    try:
        if "file" in protocols or "local" in protocols:  # object stores have no folders to make
            fs.makedirs(posixpath.dirname(probe), exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except OSError as e:  # what fsspec's stores raise for a missing bucket, a denied write, a read-only mount
        raise OutputNotWritable(f"output {uri!r} is not writable: {_reason(e)}") from e
