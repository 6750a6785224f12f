"""Sharded corpora: WebDataset tar shards and Parquet shards holding audio bytes, answered sample by sample.

Indexing, while planning: the shards under `input.uri` are listed like files, then each is indexed without
reading its audio:
- a tar: its headers are walked (member data is skipped, not read); the members sharing a key (the name up to
  its first dot, WebDataset's rule) are one sample, located by the byte range of its members;
- a Parquet file: its footer gives the row groups and their rows (the id column, if named, is read; nothing else).
Each sample is one source (`SourceFile`) whose `source_uri` is `<shard uri>#<key>` and whose item id comes from
that, the shard's size and its version (ETag or mtime), so resume and incremental runs work per sample as they do
per file, and a rewritten shard is answered again. The plan holds the samples not answered yet; answered ones are
never read.

Pieces: the consecutive samples of a shard one decode task takes, `files_per_task` samples of a tar (each read
with its own ranged read, all at once) or one row group of a Parquet file (streamed a few rows at a time). A big
shard so spreads over many tasks, and no worker holds a whole shard. Each sample then goes through the same
decode and segmenting as a file (`pipeline.prepare.prepare_audio`): a sample is a recording.

Bad input is data: a sample without audio, a member that does not decode, a row whose audio is null each give one
error row naming shard and key; a truncated or corrupt tar gives its readable samples plus one error row for the
unreadable rest (`<shard uri>#@<byte offset>`); a Parquet file whose footer or a row group cannot be read gives
an error row for each sample it could not read (or one for the shard, when not even its rows are known).
"""

from __future__ import annotations

import itertools
import json
import posixpath
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import InputConfig, TaskConfig
from contract.messages import ModelInfo
from pipeline.pack import file_requests, text_tokens
from pipeline.prepare import ReadError, base_row, prepare_audio, refuse
from pipeline.rows import REQUEST_SCHEMA, error_columns, table
from pipeline.sources import SourceFile, item_id, list_audio
from pipeline.storage import open_fs

SUFFIXES = {"webdataset": ["tar"], "parquet": ["parquet"]}
INDEX_THREADS = 8  # shards indexed at once while planning (ranged reads wait on the store, not the CPU)
INDEX_BLOCK = 1 << 16  # bytes fetched per read while walking tar headers: a header and often the next ones
PARQUET_BUFFER = 1 << 20  # bytes buffered per column while streaming a row group
PARQUET_ROWS = 8  # rows decoded from Parquet at a time
FILE_PLAN_ROWS = 100  # samples per decode task when the plan is read back from a file (pieces may be cut there)


class NoAudio(Exception):
    """A sample has no audio: no member with an audio extension, or a null audio value."""


class UnreadableShard(Exception):
    """A shard, or the rest of one from some point on, cannot be read (truncated or corrupt)."""


def shard_samples(config: InputConfig, storage: dict | None, files_per_task: int) -> Iterator[SourceFile]:
    """The samples of every shard under `config.uri`, in order: one source per sample, plus the error sources
    of what cannot be read. Shards are indexed a few at a time, in parallel."""
    shards = list_audio(config.uri, SUFFIXES[config.format], storage=storage, glob=config.glob,
                        since=config.since_time())
    index = {"webdataset": tar_samples, "parquet": parquet_samples}[config.format]
    with ThreadPoolExecutor(INDEX_THREADS) as pool:
        while window := list(itertools.islice(shards, INDEX_THREADS)):
            for samples in pool.map(lambda s: list(index(s, config, storage, files_per_task)), window):
                yield from samples


def sample_source(shard: SourceFile, key: str, size: int, locator: dict | None = None,
                  error: Exception | None = None) -> SourceFile:
    """A sample (or an unreadable part) of `shard` as a source: `<shard uri>#<key>`, identified by the shard's
    size and version too, so a rewritten shard is a new set of items."""
    uri = f"{shard.source_uri}#{key}" if key else shard.source_uri
    return SourceFile(item_id(uri, shard.size, shard.version), uri, size, shard.version,
                      locator=json.dumps(locator) if locator else None,
                      error_class=type(error).__name__ if error else None,
                      error=f"{uri}: {error}" if error else None)


# ---- WebDataset tar shards ------------------------------------------------------------------------------------

def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, WebDataset's way: the extension starts at the base name's first dot."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def audio_extension(exts: list[str], config: InputConfig) -> str | None:
    """The sample's member taken as its audio: `audio_member` if it has it, else the first of `extensions`."""
    def kind(ext: str) -> str:
        return ext.rsplit(".", 1)[-1]  # `seg1.flac` is flac audio

    wanted = [config.audio_member.lower().lstrip(".")] if config.audio_member else []
    for choice in wanted + [e.lower().lstrip(".") for e in config.extensions]:
        for ext in exts:
            if ext == choice or kind(ext) == choice:
                return ext
    return None


def tar_sample(shard: SourceFile, key: str, members: list[tarfile.TarInfo], piece: int,
               config: InputConfig) -> SourceFile:
    exts = {split_name(m.name)[1]: m for m in members}
    audio = audio_extension(list(exts), config)
    if audio is None:
        return sample_source(shard, key, 0, error=NoAudio(f"no audio member (members: {', '.join(exts) or 'none'}; "
                                                           f"input.extensions: {', '.join(config.extensions)})"))
    start, end = members[0].offset, members[-1].offset_data + members[-1].size
    parts = {ext: exts[ext] for ext in dict.fromkeys((audio, "json", "txt")) if ext in exts}
    locator = {"shard": shard.source_uri, "piece": piece, "start": start, "end": end, "audio": audio,
               "members": {ext: [m.offset_data - start, m.size] for ext, m in parts.items()}}
    return sample_source(shard, key, exts[audio].size, locator)


def tar_samples(shard: SourceFile, config: InputConfig, storage: dict | None,
                files_per_task: int) -> Iterator[SourceFile]:
    """The samples of a tar shard from its headers; the unreadable rest of a truncated one as one error source."""
    fs, path = open_fs(shard.source_uri, storage)
    count = 0
    pending: list[tarfile.TarInfo] = []  # members of the sample being read
    failure, at, tar = None, None, None
    try:
        with fs.open(path, "rb", block_size=INDEX_BLOCK) as f:
            tar = tarfile.open(fileobj=f, mode="r:")
            while (info := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header otherwise
                if not info.isfile():
                    continue
                if pending and split_name(info.name)[0] != split_name(pending[0].name)[0]:
                    yield tar_sample(shard, split_name(pending[0].name)[0], pending, count // files_per_task, config)
                    count += 1
                    pending = []
                pending.append(info)
                if info.offset_data + info.size > shard.size:
                    at, pending = pending[0].offset, []  # the sample is cut inside: all of it is in the rest
                    raise tarfile.ReadError(f"member {info.name} runs past the end of the file")
            # The walk also ends quietly at a cut or corrupt header: a proper end is a zero block, or the file's end.
            f.seek(tar.offset)
            block = f.read(tarfile.BLOCKSIZE)
            if block and (len(block) < tarfile.BLOCKSIZE or block.strip(b"\0")):
                failure, at = tarfile.ReadError(f"no valid header at byte {tar.offset}"), tar.offset
    except (tarfile.TarError, OSError, ValueError) as e:
        failure, at = e, (at if at is not None else tar.offset if tar else 0)
    if pending:  # its members are whole; any after a bad header are lost with the rest
        yield tar_sample(shard, split_name(pending[0].name)[0], pending, count // files_per_task, config)
        count += 1
    if failure is None:
        return
    yield sample_source(shard, f"@{at}", 0, error=UnreadableShard(
        f"unreadable from byte {at} of {shard.size} ({failure}); the {count} samples before it are answered"))


def tar_members(data: bytes, locator: dict) -> tuple[bytes, dict[str, bytes]]:
    """A sample's audio bytes and its other members (json, txt), cut from the bytes of its range."""
    audio_at, audio_size = locator["members"][locator["audio"]]
    others = {ext: data[at:at + size] for ext, (at, size) in locator["members"].items() if ext != locator["audio"]}
    return data[audio_at:audio_at + audio_size], others


def tar_metadata(members: dict[str, bytes]) -> str | None:
    """The sample's metadata: its .json member's fields, and its .txt member as `text`."""
    fields: dict[str, Any] = {}
    if "json" in members:
        try:
            loaded = json.loads(members["json"])
            fields.update(loaded if isinstance(loaded, dict) else {"json": loaded})
        except ValueError:
            fields["json"] = members["json"].decode("utf-8", "replace")
    if "txt" in members:
        fields["text"] = members["txt"].decode("utf-8", "replace")
    return json.dumps(fields, ensure_ascii=False, default=str) if fields else None


def read_tar_samples(sources: list[dict], storage: dict | None) -> Iterator[tuple[dict, bytes | None, Exception]]:
    """(source, bytes of its range, or None and why) for samples of one tar, read with one ranged read each,
    all at once."""
    locators = [json.loads(s["locator"]) for s in sources]
    try:
        fs, path = open_fs(locators[0]["shard"], storage)
        parts = fs.cat_ranges([path] * len(sources), [loc["start"] for loc in locators],
                              [loc["end"] for loc in locators], on_error="return")
    except (OSError, ValueError) as e:
        parts = [e] * len(sources)
    for source, locator, part in zip(sources, locators, parts):
        if isinstance(part, Exception):
            yield source, None, part
        elif len(part) != locator["end"] - locator["start"]:
            yield source, None, UnreadableShard(f"read {len(part)} of {locator['end'] - locator['start']} bytes; "
                                                f"was the shard rewritten since it was listed?")
        else:
            yield source, part, None


# ---- Parquet shards -------------------------------------------------------------------------------------------

def parquet_samples(shard: SourceFile, config: InputConfig, storage: dict | None,
                    files_per_task: int) -> Iterator[SourceFile]:
    """The rows of a Parquet shard from its footer (and id column); one error source if it cannot be read."""
    fs, path = open_fs(shard.source_uri, storage)
    samples: list[SourceFile] = []
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            for column, field in ((config.audio_column, "audio_column"), (config.id_column, "id_column")):
                if column is not None and column not in names:
                    raise UnreadableShard(f"no column {column!r} (input.{field}); columns: {', '.join(names)}")
            row = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                ids = (parquet.read_row_group(group, columns=[config.id_column]).column(0).to_pylist()
                       if config.id_column else range(row, row + rows))
                for index, key in enumerate(ids):
                    samples.append(sample_source(shard, str(key), 0, {"shard": shard.source_uri, "piece": group,
                                                                      "row": index}))
                row += rows
    except (UnreadableShard, OSError, ValueError, pa.ArrowException) as e:
        # Without a footer no row is known: one error for the shard. A bad row group is found when it is read.
        samples = [sample_source(shard, "", 0, error=e if isinstance(e, UnreadableShard) else
                                 UnreadableShard(f"not a readable Parquet file: {e}"))]
    return iter(samples)


def read_parquet_rows(sources: list[dict], audio_column: str, id_column: str | None,
                      storage: dict | None) -> Iterator[tuple[dict, dict | None, Exception | None]]:
    """(source, its row's columns, or None and why) for samples of one row group, streamed a few rows at a time,
    so a big row group is never held whole."""
    locators = [json.loads(s["locator"]) for s in sources]
    wanted = {loc["row"]: source for loc, source in zip(locators, sources)}
    last, index = max(wanted), 0
    try:
        fs, path = open_fs(locators[0]["shard"], storage)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f, buffer_size=PARQUET_BUFFER, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=PARQUET_ROWS, row_groups=[locators[0]["piece"]]):
                for row in batch.to_pylist():
                    if index in wanted:
                        yield wanted.pop(index), row, None
                    index += 1
                if index > last:
                    break
    except (OSError, ValueError, pa.ArrowException) as e:
        failure = UnreadableShard(f"row group {locators[0]['piece']} unreadable from row {index}: {e}")
    else:
        failure = UnreadableShard(f"row group {locators[0]['piece']} has only {index} rows; was the shard "
                                  f"rewritten since it was listed?")
    for source in wanted.values():
        yield source, None, failure


def parquet_audio(row: dict, audio_column: str, id_column: str | None) -> tuple[bytes, str | None]:
    """A row's audio bytes (from a {bytes, path} struct or plain binary) and its other columns as metadata."""
    audio = row.pop(audio_column)
    row.pop(id_column, None)
    if isinstance(audio, dict):
        audio = audio.get("bytes")
    if not audio:
        raise NoAudio(f"no audio bytes in column {audio_column!r} (null or empty)")
    return audio, json.dumps(row, ensure_ascii=False, default=str) if row else None


# ---- the decode stage -----------------------------------------------------------------------------------------

def piece_of(source: dict) -> tuple[str, int] | None:
    if not source.get("locator"):
        return None
    locator = json.loads(source["locator"])
    return locator["shard"], locator["piece"]


def piece_slices(plan: pa.Table) -> Iterator[pa.Table]:
    """The plan (samples in shard order) cut where the piece changes: one slice per decode task."""
    start, current = 0, None
    for end, locator in enumerate(plan.column("locator").to_pylist()):
        key = piece_of({"locator": locator})
        if end and key != current:
            yield plan.slice(start, end - start)
            start = end
        current = key
    if plan.num_rows:
        yield plan.slice(start)


def prepare_samples(batch: pa.Table, *, tasks: list[dict[str, Any]], info: ModelInfo, handle: Any, format: str,
                    audio_column: str, id_column: str | None, rows_per_block: int, max_size_mb: float | None = None,
                    storage: dict | None = None, **options: Any) -> Iterator[pa.Table]:
    """Ray Data stage (stateless tasks): planned samples in, request rows out (each sample packed into its
    requests as a file is, `pipeline.pack`), a block every `rows_per_block` samples so memory stays bounded
    whatever the piece's size. `tasks`, `info` and `handle` as `prepare_batch`'s, `options` as `prepare_audio`'s."""
    chosen = [TaskConfig.model_validate(t) for t in tasks]
    rows: list[dict] = []
    done = 0

    def emit(items: list[dict[str, Any]]) -> None:
        rows.extend(file_requests(items, chosen, info, lambda task: text_tokens(handle, task)))

    for piece, group in itertools.groupby(batch.to_pylist(), key=piece_of):
        group = list(group)
        readable = []
        for source in group:
            refused = refuse(source, base_row(source), max_size_mb)
            if refused:
                emit(refused)
            else:
                readable.append(source)
        if not readable:
            continue
        if format == "webdataset":
            read = read_tar_samples(readable, storage)
        else:
            read = read_parquet_rows(readable, audio_column, id_column, storage)
        for source, data, failure in read:
            base = base_row(source)
            if failure is None:
                try:
                    if format == "webdataset":
                        data, members = tar_members(data, json.loads(source["locator"]))
                        base["metadata"] = tar_metadata(members)
                    else:
                        data, base["metadata"] = parquet_audio(data, audio_column, id_column)
                    size_error = refuse({**source, "size": len(data)}, base, max_size_mb)
                    emit(size_error or prepare_audio(base, data, **options))
                except NoAudio as e:
                    emit([{**base, **error_columns("read", NoAudio(f"{source['source_uri']}: {e}"),
                                                   retryable=False)}])
            else:
                # A shard cut short stays so; a store that failed to answer may answer next time.
                retry = not isinstance(failure, (UnreadableShard, FileNotFoundError, PermissionError))
                kind = UnreadableShard if isinstance(failure, UnreadableShard) else ReadError
                emit([{**base, **error_columns("read", kind(f"{source['source_uri']}: {failure}"),
                                               retryable=retry)}])
            done += 1
            if done % rows_per_block == 0:
                yield table(rows, REQUEST_SCHEMA)
                rows = []
    if rows:
        yield table(rows, REQUEST_SCHEMA)
