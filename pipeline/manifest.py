"""Manifests: a table (JSONL, CSV or Parquet) naming the audio to answer, one row per file.

Columns: the audio URI (`input.uri_column`, default `audio`), optional `id` (the item id; else one is made
from the URI, size and version as for listed files), optional `task` (ask only that configured task) and
`question` (this item's own question), and any others, carried through to the output's `metadata` column
as a JSON object. Relative URIs resolve against the manifest's folder. A row whose URI is missing, malformed
or not found still yields its item, as an error row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from contract.text import summary
from pipeline.sources import SourceError, SourceFile, item_id, version_of
from pipeline.storage import full_uri, open_fs

RESERVED = ("id", "task", "question")


class InvalidURI(Exception):
    """A manifest row's audio URI is missing, malformed, or names no object."""


def _batches(fs, path: str) -> Iterator[pa.RecordBatch]:
    """The manifest's rows in batches; Parquet and CSV stream, JSONL is read whole (it is small per row)."""
    suffix = posixpath.splitext(path)[1].lower()
    f = fs.open(path, "rb")
    with f:
        if suffix == ".parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=10_000)
        elif suffix == ".csv":
            yield from pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        elif suffix in (".jsonl", ".json", ".ndjson"):
            yield from pajson.read_json(f).to_batches(10_000)
        else:
            raise SourceError(f"manifest {path!r}: expected .jsonl, .csv or .parquet")


def _resolve(base_fs, base_dir: str, raw: Any, storage: dict | None) -> tuple[Any, str]:
    """(filesystem, path) of a manifest URI: absolute URIs as they are, relative ones below the manifest."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidURI(f"audio URI is missing (got {type(raw).__name__}: {summary(raw, 200)})")
    raw = raw.strip()
    if "://" in raw or raw.startswith("/"):
        try:
            return open_fs(raw, storage)
        except (ValueError, ImportError) as e:
            raise InvalidURI(f"audio URI {summary(raw)!r} is malformed: {e}") from e
    return base_fs, posixpath.normpath(posixpath.join(base_dir, raw))


def read_manifest(uri: str, uri_column: str, *, storage: dict | None = None) -> Iterator[SourceFile]:
    """Yield one source per manifest row, in order; a bad row's source carries its error."""
    try:
        fs, path = open_fs(uri, storage)
        batches = _batches(fs, path)
        first = next(batches, None)
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"cannot read manifest {uri!r}: {e}") from e
    if first is None:
        return
    if uri_column not in first.schema.names:
        raise SourceError(f"manifest {uri!r} has no column {uri_column!r} (input.uri_column); "
                          f"columns: {', '.join(first.schema.names)}")
    base_dir = posixpath.dirname(path)
    line = 0
    for batch in itertools.chain([first], batches):
        for row in batch.to_pylist():
            line += 1
            raw = row.pop(uri_column)
            fixed = {k: row.pop(k, None) for k in RESERVED}
            metadata = json.dumps(row, default=summary, ensure_ascii=False) if row else None
            common = {"task": fixed["task"], "question": fixed["question"], "metadata": metadata}
            try:
                file_fs, file_path = _resolve(fs, base_dir, raw, storage)
                info = file_fs.info(file_path)
                source = full_uri(file_fs, file_path)
                size, version = int(info.get("size") or 0), version_of(info)
                yield SourceFile(str(fixed["id"]) if fixed["id"] is not None else item_id(source, size, version),
                                 source, size, version, **common)
            except (InvalidURI, OSError) as e:
                error = e if isinstance(e, InvalidURI) else InvalidURI(f"{summary(raw)}: {e}")
                stable = hashlib.sha256(f"{uri}\0{line}\0{raw}".encode()).hexdigest()[:24]
                yield SourceFile(str(fixed["id"]) if fixed["id"] is not None else stable, summary(raw), 0, "",
                                 error_class=type(error).__name__, error=f"manifest row {line}: {error}", **common)

