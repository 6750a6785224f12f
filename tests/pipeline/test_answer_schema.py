"""A task's answer schema through the whole pipeline: real Ray Data and a real Serve replica holding the `openai`
engine, against a stand-in OpenAI-compatible server (tests/openai_stub.py) scripted to answer off the schema, which
no real engine holding to a schema would do on demand."""

from __future__ import annotations

import json

import pyarrow.dataset as pads

from contract.config import load_config
from deployments.app import serving
from pipeline.run import run
from tests.conftest import samples_in
from tests.openai_stub import Stub

MOOD = "tasks=[{name: mood, question: 'How does the speaker feel?', answer: [angry, calm]}]"


def test_an_answer_off_its_schema_is_an_error_row_that_retry_failed_redoes(ray_cluster, tmp_path):
    inputs = samples_in(tmp_path / "in", "greeting.wav", "weather.flac")
    out = tmp_path / "out"
    with Stub(key=None) as stub:
        config = load_config(None, [
            f"input.uri={inputs}", f"output.uri={out}", "deployment.app_name=test-answer-schema",
            "engine.kind=openai", "engine.family=step_audio_r1", "engine.model_name=served-model",
            f"engine.openai.base_url={stub.url}", "engine.openai.backoff_s=0.01", MOOD,
        ])
        stub.content = "Raised voice.</think>\nThe caller sounds angry.<|EOT|>"
        run(config, serving)
        rows = pads.dataset(str(out)).to_table().to_pylist()
        assert len(rows) == 2
        for row in rows:
            assert (row["error_class"], row["error_stage"], row["retryable"]) == ("AnswerInvalid", "infer", True)
            assert "not JSON" in row["error"]
            assert row["reasoning"] == "Raised voice." and row["answer"] == "The caller sounds angry."
        body = stub.received[0][0]
        assert body["response_format"]["json_schema"]["schema"] == {"type": "string", "enum": ["angry", "calm"]}

        stub.content = 'Raised voice.</think>\n"angry"<|EOT|>'
        stub.received.clear()
        run(config, serving)  # without --retry-failed the error rows stand
        assert not stub.received
        run(config, serving, retry_failed=True)
        rows = pads.dataset(str(out)).to_table().to_pylist()
    assert sorted(r["source_uri"].rsplit("/", 1)[1] for r in rows) == ["greeting.wav", "weather.flac"]
    assert {(r["answer"], r["error_class"]) for r in rows} == {('"angry"', None)}
    report = json.loads((out / "_reports" / "latest.json").read_text())
    assert report["labels"] == {"mood": {"": {'"angry"': 2}}}
    # The README's DuckDB count of answers by label.
    import duckdb

    counted = duckdb.connect().sql(
        f"SELECT answer->>'$' AS mood, count(*) FROM read_parquet('{out}/run_date=*/*.parquet', "
        "hive_partitioning=true) WHERE task = 'mood' AND error_class IS NULL GROUP BY 1").fetchall()
    assert counted == [("angry", 2)]
