"""Listing audio files under a local path or any fsspec URI, each with a stable item id.

Listing streams: S3 is read page by page (1000 keys at a time) and other stores folder by folder, so the
driver's memory does not grow with the number of objects.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
from fsspec.asyn import sync

from contract.times import as_utc, parse_time
from pipeline.storage import full_uri, open_fs

logger = logging.getLogger(__name__)


class SourceError(Exception):
    """The input location cannot be listed."""


@dataclass(frozen=True)
class SourceFile:
    item_id: str
    source_uri: str
    size: int
    version: str
    task: str | None = None  # from a manifest: ask only this task
    question: str | None = None  # from a manifest: this item's own question
    metadata: str | None = None  # from a manifest: its other columns, as a JSON object
    error_class: str | None = None  # a manifest row that names no readable object
    error: str | None = None
    locator: str | None = None  # a sample of a shard: where its bytes are (pipeline.shards), as JSON

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def item_id(uri: str, size: int, version: str) -> str:
    """Same file, same id: a changed file (new size, mtime or ETag) is a new item."""
    return hashlib.sha256(f"{uri}\0{size}\0{version}".encode()).hexdigest()[:24]


def version_of(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def modified(info: dict[str, Any]) -> datetime | None:
    """When the object last changed, as an aware datetime, if the store says."""
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return as_utc(value)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            return parse_time(value)
    return None


def _walk(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, info) of every file under `root`."""
    if fs.isfile(root):
        yield root, fs.info(root)
        return
    if hasattr(fs, "_iterdir") and fs.protocol[0] == "s3":
        bucket, _, key = root.partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        pages = fs._iterdir(bucket, delimiter="", prefix=prefix)  # flat, paginated: one page in memory
        while True:
            try:
                info = sync(fs.loop, pages.__anext__)
            except StopAsyncIteration:
                return
            yield info["name"], info
    elif _is_local(fs):
        yield from _walk_local(fs, root)
    else:
        for folder, _, files in fs.walk(root, detail=True):
            for name, info in files.items():
                yield info.get("name") or posixpath.join(folder, name), info


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def _walk_local(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A local folder's files, following symlinked folders (fsspec's walk skips them without a word); a link
    back to a folder already listed (a loop, or a second way to the same folder) is reported and not followed."""
    seen: set[tuple[int, int]] = set()
    for folder, folders, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            logger.warning("input: not listing %s again: it is a link to a folder already listed",
                           folder)
            folders[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        folders.sort()
        for name in sorted(files):
            path = posixpath.join(folder, name)
            try:
                yield path, fs.info(path)
            except FileNotFoundError:
                logger.warning("input: skipping %s: a link to nothing", path)


def list_audio(uri: str, extensions: list[str], *, storage: dict | None = None, glob: str | None = None,
               since: datetime | None = None) -> Iterator[SourceFile]:
    """Yield the audio files under `uri` (a file or a folder, walked recursively).

    `glob` filters on the path below `uri` (`calls/2026-*/*`); `since` keeps files modified at or after it.
    """
    try:
        fs, root = open_fs(uri, storage)
    except (ValueError, ImportError) as e:
        raise SourceError(f"cannot open input {uri!r}: {e}") from e
    suffixes = {"." + e.lower().lstrip(".") for e in extensions}
    try:
        if not fs.exists(root):
            raise SourceError(f"input {uri!r} does not exist")
        for path, info in _walk(fs, root.rstrip("/")):
            if posixpath.splitext(path)[1].lower() not in suffixes:
                continue
            if glob and not fnmatch.fnmatch(posixpath.relpath(path, root), glob):
                continue
            if since and (modified(info) or since) < since:
                continue
            source = full_uri(fs, path)
            size = int(info.get("size") or 0)
            version = version_of(info)
            yield SourceFile(item_id(source, size, version), source, size, version)
    except OSError as e:
        raise SourceError(f"cannot list input {uri!r}: {e}") from e
