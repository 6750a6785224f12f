"""Listing audio files under a local path or any fsspec URI, each with a stable item id."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs


class SourceError(Exception):
    """The input location cannot be listed."""


@dataclass(frozen=True)
class SourceFile:
    item_id: str
    source_uri: str
    size: int
    version: str

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def item_id(uri: str, size: int, version: str) -> str:
    """Same file, same id: a changed file (new size, mtime or ETag) is a new item."""
    return hashlib.sha256(f"{uri}\0{size}\0{version}".encode()).hexdigest()[:24]


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def _uri(fs: fsspec.AbstractFileSystem, path: str, *, local: bool) -> str:
    """The URI as a user would write it: a plain path for local files, protocol://path otherwise."""
    return path if local else fs.unstrip_protocol(path)


def list_audio(uri: str, extensions: list[str]) -> Iterator[SourceFile]:
    """Yield the audio files under `uri` (a file or a folder, walked recursively).

    Walking one folder at a time keeps the driver's memory bounded by the largest folder.
    """
    try:
        fs, root = url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise SourceError(f"cannot open input {uri!r}: {e}") from e
    local = fs.protocol in ("file", "local") or "file" in fs.protocol
    suffixes = {"." + e.lower().lstrip(".") for e in extensions}
    try:
        if not fs.exists(root):
            raise SourceError(f"input {uri!r} does not exist")
        if fs.isfile(root):
            walk = [(posixpath.dirname(root), {}, {posixpath.basename(root): fs.info(root)})]
        else:
            walk = fs.walk(root, detail=True)
        for folder, dirs, files in walk:
            for name in sorted(files):
                if posixpath.splitext(name)[1].lower() not in suffixes:
                    continue
                info = files[name]
                path = info.get("name") or posixpath.join(folder, name)
                source = _uri(fs, path, local=local)
                size = int(info.get("size") or 0)
                version = _version(info)
                yield SourceFile(item_id(source, size, version), source, size, version)
    except OSError as e:
        raise SourceError(f"cannot list input {uri!r}: {e}") from e
