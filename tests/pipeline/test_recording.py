"""Scope recording: the model hears the whole file, one answer row per (recording, task).

Whisper gets the whole file through faster-whisper's long-form transcription; the real vLLM engine with the tiny
Qwen2-Audio model and a small context gets a 3.5-minute file in windows, whose answers one more request combines.
"""

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from contract.audio import decode
from contract.config import load_config
from contract.formats import get_format
from contract.pack import Budget, pack
from contract.segment import segment
from deployments.app import serving
from pipeline.run import run
from tests.conftest import ROOT, joined_samples, word_error_rate

TIMEOUT_S = 300


def rows(out: Path) -> list[dict]:
    return pads.dataset(str(out)).to_table().to_pylist()


def test_whisper_transcribes_a_long_recording_as_well_as_faster_whisper_does(whisper_app, tmp_path):
    from faster_whisper import WhisperModel

    from deployments.engines.whisper import _packaged_model_path

    inputs, out = tmp_path / "in", tmp_path / "out"
    reference = joined_samples(inputs / "joined.wav")
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", *whisper_app])
    assert run(config, serving).rows == 1
    (row,) = rows(out)
    assert row["segment_index"] is None and row["part"] is None and row["end_s"] > 180
    assert row["segments"][-1]["end"] > 170 and row["segments"][0]["start"] < 5
    # faster-whisper run directly on the same audio, with the same model and settings (its defaults, English).
    engine = config.engine.engine_kwargs
    model = WhisperModel(_packaged_model_path(), device="cpu", compute_type=engine["compute_type"],
                         cpu_threads=engine["cpu_threads"])
    direct, _ = model.transcribe(decode((inputs / "joined.wav").read_bytes()), language="en")
    direct_wer = word_error_rate(reference, " ".join(s.text.strip() for s in direct))
    pipeline_wer = word_error_rate(reference, row["answer"])
    print(f"WER on the joined samples ({row['end_s']:.0f} s): pipeline {pipeline_wer:.3f}, direct {direct_wer:.3f}")
    assert pipeline_wer <= direct_wer + 0.01


# The tiny model's context is cut to 2048 tokens and 4 audio items per request: a 25 s item is 625 audio tokens,
# so a window holds 3 items (1875 + the text + max_tokens 32) and a 3.5-minute file needs several windows.
SMALL_CONTEXT = ["engine.engine_kwargs.max_model_len=2048", "engine.engine_kwargs.limit_mm_per_prompt={audio: 4}"]


@pytest.fixture(scope="module")
def small_context_app(ray_cluster, tiny_qwen2_audio):
    from ray import serve

    from deployments.app import application

    name = "test-recording-vllm"
    config = load_config(ROOT / "configs" / "tiny-vllm.yaml", [f"deployment.app_name={name}", *SMALL_CONTEXT])
    handle = serve.run(application(config), name=name, route_prefix=None)
    yield handle, [f"deployment.app_name={name}", "deployment.reuse_running=true", *SMALL_CONTEXT]
    serve.delete(name)


def expected_windows(handle, config, path: Path) -> dict[str, list[tuple[float, float, int]]]:
    """Per task: each window's (start_s, end_s, prompt tokens), from the file's items and the app's budget."""
    info = handle.info.remote().result(timeout_s=TIMEOUT_S)
    assert (info.max_model_len, info.max_audio_items) == (2048, 4)  # read from the running engine
    audio = decode(path.read_bytes())
    items = segment(audio, max_s=config.segment.max_s, search_s=config.segment.search_s)
    fmt = get_format(info.family)
    tokens = [fmt.audio_tokens(end - start) for start, end in items]
    expected = {}
    for task in config.tasks:
        text = handle.text_tokens.remote(task.system, task.question, task.prefill, 4).result(timeout_s=TIMEOUT_S)
        windows = pack(tokens, budget=Budget(info.max_model_len, info.max_audio_items),
                       max_tokens=task.sampling.max_tokens, text_tokens=text.__getitem__)
        expected[task.name] = [(items[a][0] / 16000, items[b - 1][1] / 16000, text[b - a] + sum(tokens[a:b]))
                               for a, b in windows]
    return expected


@pytest.fixture(scope="module")
def long_recording(small_context_app, tmp_path_factory):
    """A run over a 3.5-minute recording and a 5 s one, every part and answer written one row per file."""
    handle, app = small_context_app
    inputs, out = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    joined_samples(inputs / "joined.wav")
    (inputs / "greeting.wav").write_bytes((ROOT / "samples" / "audio" / "greeting.wav").read_bytes())
    config = load_config(ROOT / "configs" / "tiny-vllm.yaml", [f"input.uri={inputs}", f"output.uri={out}",
                                                               "output.rows_per_file=1", "resources.batch_size=1", *app])
    summary = run(config, serving)
    return config, summary, inputs, out, expected_windows(handle, config, inputs / "joined.wav")


def test_a_long_recording_is_answered_in_windows_and_once_as_a_whole(long_recording):
    config, summary, inputs, out, expected = long_recording
    written = rows(out)
    assert summary.rows == len(written) and summary.errors == 0
    for task in ("transcribe", "describe"):
        mine = [r for r in written if r["task"] == task]
        # The short recording: one request, one row.
        (short,) = [r for r in mine if r["source_uri"].endswith("greeting.wav")]
        assert short["part"] is None and short["part_count"] is None and short["scope"] == "recording"
        joined = [r for r in mine if r["source_uri"].endswith("joined.wav")]
        parts = sorted((r for r in joined if r["part"] is not None), key=lambda r: r["part"])
        assert len(expected[task]) >= 3
        # The windows as packed, covering the file with no gap and no overlap; each prompt as the engine counted
        # it is the text tokens plus its items' audio tokens.
        assert [(r["start_s"], r["end_s"], r["prompt_tokens"]) for r in parts] == \
            [(pytest.approx(a), pytest.approx(b), n) for a, b, n in expected[task]]
        assert all(r["part_count"] == len(parts) and r["segment_index"] is None for r in parts)
        # Exactly one answer row: the combining request's, over the whole file.
        (answer,) = [r for r in joined if r["part"] is None]
        assert answer["part_count"] == len(parts) and answer["error_class"] is None
        assert (answer["start_s"], answer["end_s"]) == (0.0, parts[-1]["end_s"])
        assert answer["prompt_tokens"] > 0 and answer["finish_reason"] in ("stop", "length")


def test_a_run_that_died_before_combining_is_finished_by_the_next_and_a_rerun_adds_nothing(long_recording):
    config, _, _, out, expected = long_recording
    # The state a job killed between the windows and the combining requests leaves (each row is its own file,
    # output.rows_per_file=1): drop the answers, and one window too.
    files = sorted(out.glob("*/*.parquet"))
    combined = [f for f in files if any(r["part"] is None and r["part_count"] for r in rows_of(f))]
    assert sum(len(rows_of(f)) for f in combined) == 2
    window = next(f for f in files if 1 in [r["part"] for r in rows_of(f)])
    lost = {key(r) for r in rows_of(window)}
    answers = {key(r) for f in combined for r in rows_of(f)}
    for f in [*combined, window]:
        f.unlink()
    before = {key(r) for r in rows(out)}

    again = run(config, serving)
    assert again.errors == 0
    written = rows(out)
    new = {key(r) for r in written if r["run_id"] == again.run_id}
    assert new == lost | answers and again.rows == len(new)  # what was lost, then both answers; nothing else
    assert {key(r) for r in written} == before | new and len(written) == len(before | new)
    assert run(config, serving).rows == 0


def rows_of(path: Path) -> list[dict]:
    return pads.dataset(str(path)).to_table().to_pylist()


def key(row: dict) -> tuple:
    return row["item_id"], row["segment_index"], row["part"], row["task"], row["prompt"]
