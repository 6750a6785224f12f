"""Text the job writes is bounded and printable: a manifest whose audio column holds the audio itself (a Hugging
Face Parquet used as a manifest) gives short error rows and a small report, not the repr of the audio."""

import glob
import logging

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from contract.config import load_config
from contract.text import summary
from deployments.app import serving
from pipeline.run import run


def test_bytes_in_the_uri_column_are_summarized_everywhere(whisper_app, tmp_path, caplog):
    audio = [{"bytes": np.random.default_rng(i).bytes(300_000), "path": f"clip{i}.wav"} for i in range(2)]
    manifest = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"audio": audio, "note": [b"\x00\x01" * 50_000, b"ok"]}), manifest)
    out = tmp_path / "out"
    config = load_config(None, [f"input.manifest={manifest}", f"output.uri={out}", *whisper_app])
    with caplog.at_level(logging.INFO):
        summary_ = run(config, serving)
    assert (summary_.rows, summary_.errors) == (2, 2)
    rows = pads.dataset(str(out)).to_table().to_pylist()
    for row in rows:
        assert row["error_class"] == "InvalidURI"
        for column in ("source_uri", "error", "metadata"):
            assert len(row[column]) < 1000 and row[column].isprintable(), (column, row[column][:200])
        assert "300000 bytes" in row["error"]
    (page,) = glob.glob(f"{out}/_reports/*/report.html")
    with open(page) as f:
        assert len(f.read()) < 300_000  # the report's own scripts and plots, no audio (950 KB before)
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


def test_summary_bounds_text_and_names_what_it_cut():
    assert summary({"bytes": b"x" * 300_000, "path": "a.wav"}) == "{bytes: <300000 bytes>, path: a.wav}"
    assert summary("a\x00b\nc") == "a\\x00b\\nc"
    assert summary("y" * 10_000, 100) == "y" * 100 + "... (10000 characters in all)"
