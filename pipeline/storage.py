"""Opening any URI (local path, s3://, gs://, az://, ...) as an fsspec filesystem, with the job's settings.

Credentials come from each store's standard chain (for S3: environment, shared config and profile, instance
roles), never from this project's config or logs. An S3-compatible endpoint (MinIO, Ceph, R2) comes from
`AWS_ENDPOINT_URL`, which botocore reads itself, or from `storage.endpoint_url`.
"""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.core import url_to_fs

S3_PROTOCOLS = ("s3://", "s3a://")


def fs_options(uri: str, storage: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for `uri` from the `storage` config section (as a dict, so it travels to workers)."""
    storage = storage or {}
    options = dict(storage.get("options") or {})
    if uri.startswith(S3_PROTOCOLS):
        if storage.get("endpoint_url"):
            options.setdefault("endpoint_url", storage["endpoint_url"])
        if storage.get("anonymous"):
            options["anon"] = True
    return options


def open_fs(uri: str, storage: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding `uri` and the path within it."""
    return url_to_fs(uri, **fs_options(uri, storage))


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path on `fs` as a URI any worker can open: plain for local files, protocol://path otherwise."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return path if "file" in protocols or "local" in protocols else fs.unstrip_protocol(path)
