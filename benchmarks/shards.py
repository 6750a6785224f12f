"""Sharded corpora (issue 13): samples per second read and decoded from a WebDataset tar shard and from a Parquet
shard against the same audio as plain files, and a decode worker's peak memory at 1k vs 20k samples per shard.

Throughput: the same N speech clips (the sample clips, cycled) as N plain files, as one tar shard (WebDataset
layout: `<key>.<ext>` + `<key>.json`) and as one Parquet shard (Hugging Face's `{bytes, path}` audio struct,
row groups of 100 rows). Each is run through the pipeline's own code on one core, in this process, without
Ray: files are listed and read by `pipeline.prepare.prepare_file`; shards are indexed by
`pipeline.shards.shard_samples` and read by `pipeline.shards.prepare_samples`, piece by piece (the decode
tasks' unit). Two figures each: "read" stops at the bytes (plain files: `read_bytes`; shards: the pieces' ranged
reads), "read+decode" is the whole decode stage (decode to 16 kHz, segment). Listing or indexing is included.
Local disk (page cache warm): this measures our CPU cost per sample, not object-store latency.

Memory: a fresh process runs every piece of one shard through `prepare_samples`, as a decode worker would one
piece after another (the plan, the driver's part, is made beforehand and read back 100 rows at a time, as the
pipeline hands a big plan to its decode tasks), with 1k and with 20k tiny samples (0.5 s WAV) per shard; its peak RSS is
printed. Flat (ratio ~1) means no worker holds a whole shard.

The last line, `ratio=`, is shard throughput over plain files (read+decode, the slower of tar and Parquet).
Goal: at least 1.0.

    .venv/bin/python benchmarks/shards.py            # N=600 clips for throughput
    N=2000 .venv/bin/python benchmarks/shards.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import io  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import remove_tree, scratch, wav_16k  # noqa: E402
from contract.config import load_config  # noqa: E402
from pipeline.plan import PLAN_SCHEMA  # noqa: E402
from pipeline.prepare import prepare_file, read_bytes  # noqa: E402
from pipeline.shards import piece_slices, prepare_samples, read_parquet_rows, read_tar_samples, \
    shard_samples  # noqa: E402
from pipeline.sources import list_audio  # noqa: E402

SAMPLES = ROOT / "samples" / "audio"
N = int(os.environ.get("N", "600"))
MEMORY_SIZES = (1_000, 20_000)
PER_TASK = 4  # samples per decode task (resources.files_per_task) and per tar piece
OPTIONS = {"max_item_s": 30.0, "search_s": 5.0, "max_duration_s": 3600.0}


def corpus(n: int, clips: list[tuple[str, bytes]]) -> list[tuple[str, str, bytes]]:
    """(key, extension, bytes) of n samples, cycling `clips`."""
    return [(f"s{i:06d}", clips[i % len(clips)][0], clips[i % len(clips)][1]) for i in range(n)]


def write_files(folder: Path, samples) -> None:
    folder.mkdir(parents=True)
    for key, ext, data in samples:
        (folder / f"{key}.{ext}").write_bytes(data)


def write_tar(path: Path, samples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, ext, data in samples:
            for name, body in ((f"{key}.{ext}", data), (f"{key}.json", json.dumps({"key": key}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))


def write_parquet(path: Path, samples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = pa.array([{"bytes": data, "path": f"{key}.{ext}"} for key, ext, data in samples],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"audio": audio, "key": [k for k, _, _ in samples]}), path, row_group_size=100)


def config_for(uri: Path, fmt: str):
    return load_config(None, [f"input.uri={uri}", f"input.format={fmt}", f"resources.files_per_task={PER_TASK}"])


def plan_of(config) -> pa.Table:
    return pa.Table.from_pylist([s.as_row() for s in shard_samples(config.input, {}, PER_TASK)], schema=PLAN_SCHEMA)


def run_pieces(plan: pa.Table, fmt: str, decode: bool = True) -> int:
    """Every piece of the plan through the decode stage (or only its reads), one after another."""
    count = 0
    for piece in piece_slices(plan):
        if decode:
            for block in prepare_samples(piece, format=fmt, audio_column="audio", id_column=None,
                                         rows_per_block=PER_TASK, **OPTIONS):
                count += block.num_rows
        else:
            sources = piece.to_pylist()
            read = (read_tar_samples(sources, {}) if fmt == "webdataset"
                    else read_parquet_rows(sources, "audio", None, {}))
            count += sum(1 for _ in read)
    return count


def run_shard(config, decode: bool) -> int:
    return run_pieces(plan_of(config), config.input.format, decode)


def run_files(folder: Path, decode: bool) -> int:
    count = 0
    for source in list_audio(str(folder), ["wav", "flac", "mp3", "ogg", "m4a"]):
        if decode:
            count += len(prepare_file(source.as_row(), **OPTIONS))
        else:
            count += len(read_bytes(source.source_uri)) > 0
    return count


def timed(fn, *args) -> float:
    """Samples per second of `fn(*args)`, CPU time of this process (other load barely moves it)."""
    start = time.process_time()
    fn(*args)
    return N / (time.process_time() - start)


def peak_memory(shard: Path, fmt: str) -> float:
    """Peak RSS (MB) of a fresh process running every piece of `shard` through the decode stage, as a worker
    would; the plan is made here (the driver's part) and handed over as a file."""
    plan = shard.parent / f"{shard.name}-plan.parquet"
    pq.write_table(plan_of(config_for(shard, fmt)), plan)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report this (big) process's size.
    # It reads the plan FILE_PLAN_ROWS rows at a time, as the pipeline hands a big plan to its decode tasks.
    code = (f"import re, sys; sys.path.insert(0, {str(ROOT)!r});"
            f"import pyarrow as pa, pyarrow.parquet as pq; from benchmarks.shards import run_pieces;"
            f"from pipeline.shards import FILE_PLAN_ROWS;"
            f"[run_pieces(pa.Table.from_batches([b]), {fmt!r}) for b in "
            f"pq.ParquetFile({str(plan)!r}).iter_batches(batch_size=FILE_PLAN_ROWS)];"
            f"print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    tmp = scratch("bench-shards-")
    try:
        clips = [(f.suffix[1:], f.read_bytes()) for f in sorted(SAMPLES.iterdir()) if f.stem != "lecture"]
        samples = corpus(N, clips)
        write_files(tmp / "files", samples)
        write_tar(tmp / "tar" / "shard.tar", samples)
        write_parquet(tmp / "parquet" / "shard.parquet", samples)
        del samples
        tar, parquet = config_for(tmp / "tar", "webdataset"), config_for(tmp / "parquet", "parquet")
        run_files(tmp / "files", False)  # warm the page cache and imports
        figures = {}
        for decode in (False, True):
            stage = "read+decode" if decode else "read"
            figures[stage] = {"files": timed(run_files, tmp / "files", decode),
                              "tar": timed(run_shard, tar, decode), "parquet": timed(run_shard, parquet, decode)}
            print(f"{stage:<12} samples/s (CPU) over {N} clips: " + ", ".join(
                f"{k} {v:,.0f}" for k, v in figures[stage].items()))
        tiny = [("wav", wav_16k((np.sin(np.arange(8000) / 9) * 8000).astype("<i2").tobytes()))]
        peaks = {}
        for size in MEMORY_SIZES:
            write_tar(tmp / f"mem-{size}" / "shard.tar", corpus(size, tiny))
            write_parquet(tmp / f"mem-{size}-pq" / "shard.parquet", corpus(size, tiny))
            peaks[size] = (peak_memory(tmp / f"mem-{size}", "webdataset"),
                           peak_memory(tmp / f"mem-{size}-pq", "parquet"))
            print(f"worker peak RSS, {size:,} samples per shard: tar {peaks[size][0]:.0f} MB, "
                  f"parquet {peaks[size][1]:.0f} MB")
        small, big = peaks[MEMORY_SIZES[0]], peaks[MEMORY_SIZES[1]]
        print(f"memory ratio ({MEMORY_SIZES[1]:,} / {MEMORY_SIZES[0]:,}): tar {big[0] / small[0]:.2f}, "
              f"parquet {big[1] / small[1]:.2f}")
        full = figures["read+decode"]
        print(f"ratio={min(full['tar'], full['parquet']) / full['files']:.2f}")
    finally:
        remove_tree(tmp)


if __name__ == "__main__":
    main()
