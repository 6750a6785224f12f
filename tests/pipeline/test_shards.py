"""Sharded corpora: WebDataset tars, Hugging Face Parquet and lhotse Shar, written by their own producers and read
sample by sample through the whole pipeline."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from contract.audio import decode
from contract.config import ConfigError, TaskConfig, load_config
from contract.messages import ModelInfo
from deployments.app import serving
from pipeline.plan import PLAN_SCHEMA
from pipeline.run import run
from pipeline.shards import prepare_samples, shard_samples
from tests.conftest import SAMPLES, word_error_rate

SHORT = ["greeting.wav", "meeting.mp3", "weather.flac", "story.ogg", "note.m4a"]  # one item each


def tar_shard(path: Path, names, *, extra: dict | None = None) -> Path:
    """A WebDataset shard written by webdataset's own TarWriter: the `extra` samples as given, then one per named
    sample file with its audio, a .json and a .txt."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in (extra or {}).values():
            sink.write(sample)
        for name in names:
            f = SAMPLES / name
            sink.write({"__key__": f"clips/{f.stem}", f.suffix[1:]: f.read_bytes(),
                        "json": {"speaker": f"spk-{f.stem}", "lang": "en"}, "txt": f"reference of {f.stem}"})
    return path


def hf_parquet(path: Path, names, *, nulls: int = 0, rows_per_group: int = 2) -> Path:
    """A Parquet shard as Hugging Face datasets writes it: an Audio column ({bytes, path}) with the files'
    bytes embedded (as push_to_hub does), a `name` and a `speaker` column."""
    import datasets
    from datasets.table import embed_table_storage

    path.parent.mkdir(parents=True, exist_ok=True)
    files = [str(SAMPLES / n) for n in names] + [None] * nulls
    keys = [Path(n).stem for n in names] + [f"empty-{i}" for i in range(nulls)]
    ds = datasets.Dataset.from_dict({"audio": files, "name": keys, "speaker": [f"spk-{k}" for k in keys]})
    ds = ds.cast_column("audio", datasets.Audio())
    ds = ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    ds.to_parquet(str(path), batch_size=rows_per_group)
    return path


def planned(config) -> pa.Table:
    return pa.Table.from_pylist([s.as_row() for s in shard_samples(config.input, {}, 2)], schema=PLAN_SCHEMA)


def prepared(config, plan: pa.Table) -> list[dict]:
    """The request rows of the planned samples, for one item-scope task (one request per item: no app needed
    to count prompt tokens)."""
    i = config.input
    task = TaskConfig(name="transcribe", question="Transcribe.", scope="item")
    return [row for block in prepare_samples(plan, tasks=[task.model_dump()], info=ModelInfo("m", "whisper", 30.0),
                                             handle=None, format=i.format, audio_column=i.audio_column,
                                             id_column=i.id_column, rows_per_block=2, max_item_s=30, search_s=5,
                                             max_duration_s=3600)
            for row in block.to_pylist()]


def rows(out: Path) -> list[dict]:
    return pads.dataset(str(out)).to_table().to_pylist()


def by_key(written: list[dict]) -> dict[str, dict]:
    return {r["source_uri"].rsplit("#", 1)[1]: r for r in written}


# ---- without Ray: indexing and reading ------------------------------------------------------------------------

def test_config_names_the_field():
    with pytest.raises(ConfigError, match="input.format"):
        load_config(None, ["input.format=zip"])
    with pytest.raises(ConfigError, match="manifest names files"):
        load_config(None, ["input.format=parquet", "input.manifest=m.jsonl"])
    assert load_config(None, ["input.format=webdataset", "input.audio_member=flac"]).input.audio_member == "flac"


def test_tar_samples_read_as_the_files_are(tmp_path):
    two_audio = {"both": {"__key__": "both", "wav": (SAMPLES / "greeting.wav").read_bytes(),
                          "flac": (SAMPLES / "weather.flac").read_bytes()}}
    shard = tar_shard(tmp_path / "in" / "shard-000.tar", ["greeting.wav", "lecture.wav"], extra=two_audio)
    config = load_config(None, [f"input.uri={tmp_path / 'in'}", "input.format=webdataset", "input.audio_member=flac"])
    plan = planned(config)
    assert plan.column("source_uri").to_pylist() == [f"{shard}#both", f"{shard}#clips/greeting",
                                                     f"{shard}#clips/lecture"]
    assert len(set(plan.column("item_id").to_pylist())) == 3
    items = prepared(config, plan)
    assert [(r["source_uri"].rsplit("#")[1], r["segment_index"]) for r in items] == [
        ("both", 0), ("clips/greeting", 0), ("clips/lecture", 0), ("clips/lecture", 1)]
    assert json.loads(items[1]["metadata"]) == {"speaker": "spk-greeting", "lang": "en",
                                                "text": "reference of greeting"}
    assert items[1]["audio"] == [decode((SAMPLES / "greeting.wav").read_bytes()).tobytes()]
    assert items[0]["audio"] == [decode((SAMPLES / "weather.flac").read_bytes()).tobytes()]  # audio_member chose it


def test_truncated_tar_keeps_the_samples_before_the_cut(tmp_path):
    whole = tar_shard(tmp_path / "whole.tar", SHORT).read_bytes()
    config = load_config(None, [f"input.uri={tmp_path / 'in'}", "input.format=webdataset"])
    full = planned(load_config(None, [f"input.uri={tmp_path / 'whole.tar'}", "input.format=webdataset"]))
    third = json.loads(full.column("locator")[2].as_py())
    for name, cut in (("mid-audio", third["start"] + third["members"][third["audio"]][0] + 100),
                      ("mid-header", third["start"] + 200)):
        (tmp_path / "in").mkdir(exist_ok=True)
        for old in (tmp_path / "in").iterdir():
            old.unlink()
        (tmp_path / "in" / f"{name}.tar").write_bytes(whole[:cut])
        plan = planned(config).to_pylist()
        assert [r["source_uri"].rsplit("#")[1] for r in plan] == ["clips/greeting", "clips/meeting",
                                                                   f"@{third['start']}"], name
        assert plan[2]["error_class"] == "UnreadableShard" and f"{name}.tar" in plan[2]["error"]
        assert "the 2 samples before it are answered" in plan[2]["error"]


def test_parquet_from_hugging_face_datasets(tmp_path):
    shard = hf_parquet(tmp_path / "in" / "train-00000-of-00001.parquet", ["greeting.wav", "meeting.mp3"], nulls=1)
    config = load_config(None, [f"input.uri={tmp_path / 'in'}", "input.format=parquet", "input.id_column=name"])
    items = prepared(config, planned(config))
    assert [r["source_uri"] for r in items] == [f"{shard}#greeting", f"{shard}#meeting", f"{shard}#empty-0"]
    assert json.loads(items[0]["metadata"]) == {"speaker": "spk-greeting"}
    assert items[1]["audio"] == [decode((SAMPLES / "meeting.mp3").read_bytes()).tobytes()]
    assert items[2]["error_class"] == "NoAudio" and f"{shard}#empty-0" in items[2]["error"]


def test_unreadable_parquet_is_one_error_naming_the_shard(tmp_path):
    good = hf_parquet(tmp_path / "good.parquet", ["greeting.wav"]).read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.parquet").write_bytes(good[: len(good) // 2])
    plan = planned(load_config(None, [f"input.uri={tmp_path / 'in'}", "input.format=parquet"])).to_pylist()
    assert len(plan) == 1 and plan[0]["error_class"] == "UnreadableShard"
    assert plan[0]["source_uri"] == str(tmp_path / "in" / "cut.parquet")
    (tmp_path / "in" / "cut.parquet").write_bytes(good)
    plan = planned(load_config(None, [f"input.uri={tmp_path / 'in'}", "input.format=parquet",
                                      "input.audio_column=sound"])).to_pylist()
    assert "no column 'sound' (input.audio_column)" in plan[0]["error"]


# ---- through the pipeline, with the embedded whisper engine ---------------------------------------------------

def assert_transcribed(written: list[dict], transcripts: dict[str, str]) -> None:
    for r in written:
        name = next(n for n in transcripts if Path(n).stem == Path(r["source_uri"].rsplit("#", 1)[1]).name)
        assert r["error_class"] is None, r["error"]
        assert word_error_rate(transcripts[name], r["answer"]) < 0.35, (name, r["answer"])


def test_webdataset_shards_answered_once_per_sample(whisper_app, transcripts, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    tar_shard(inputs / "shard-000.tar", ["greeting.wav", "weather.flac"])
    config = load_config(None, [f"input.uri={inputs}", "input.format=webdataset", f"output.uri={out}", *whisper_app])
    first = run(config, serving)
    assert (first.files, first.rows, first.errors) == (2, 2, 0)
    written = rows(out)
    assert_transcribed(written, transcripts)
    assert json.loads(by_key(written)["clips/weather"]["metadata"]) == {
        "speaker": "spk-weather", "lang": "en", "text": "reference of weather"}

    assert run(config, serving).rows == 0
    tar_shard(inputs / "shard-001.tar", ["meeting.mp3"])
    third = run(config, serving)
    assert (third.rows, third.skipped) == (1, 2)
    assert [r["source_uri"] for r in rows(out) if r["run_id"] == third.run_id] == \
        [f"{inputs / 'shard-001.tar'}#clips/meeting"]

    tar_shard(inputs / "shard-000.tar", ["greeting.wav", "weather.flac", "story.ogg"])  # rewritten
    fourth = run(config, serving)
    assert (fourth.rows, fourth.skipped) == (3, 1)
    assert len(rows(out)) == 6  # the old version's rows stay beside the new ones


def test_parquet_and_lhotse_shar_shards(whisper_app, transcripts, tmp_path):
    from lhotse import CutSet, Recording

    hf_parquet(tmp_path / "hf" / "train-00000-of-00001.parquet", ["greeting.wav", "note.m4a"], nulls=1)
    config = load_config(None, [f"input.uri={tmp_path / 'hf'}", "input.format=parquet", "input.id_column=name",
                                f"output.uri={tmp_path / 'out-hf'}", *whisper_app])
    summary = run(config, serving)
    assert (summary.files, summary.rows, summary.errors) == (3, 3, 1)
    written = by_key(rows(tmp_path / "out-hf"))
    assert written["empty-0"]["error_class"] == "NoAudio"
    assert_transcribed([written["greeting"], written["note"]], transcripts)
    assert json.loads(written["note"]["metadata"]) == {"speaker": "spk-note"}
    assert run(config, serving).rows == 0

    recordings = [Recording.from_file(SAMPLES / n, recording_id=Path(n).stem) for n in ("story.ogg", "meeting.mp3")]
    (tmp_path / "shar").mkdir()
    CutSet.from_manifests(recordings=recordings).to_shar(tmp_path / "shar", fields={"recording": "flac"})
    config = load_config(None, [f"input.uri={tmp_path / 'shar'}", "input.format=webdataset",
                                "input.glob=recording.*.tar", f"output.uri={tmp_path / 'out-shar'}", *whisper_app])
    assert run(config, serving).rows == 2
    written = rows(tmp_path / "out-shar")
    assert_transcribed(written, {f"{k}-{i}": v for i, k in enumerate(("story", "meeting"))
                                 for n, v in transcripts.items() if n.startswith(k)})
    assert {json.loads(r["metadata"])["id"] for r in written} == {"story", "meeting"}  # the recording manifest


def test_bad_samples_are_rows_naming_shard_and_key(whisper_app, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.plan.CHUNK", 2)  # the plan goes through a file, as a big corpus's does
    inputs, out = tmp_path / "in", tmp_path / "out"
    broken = {"silent": {"__key__": "no-audio", "json": {"speaker": "nobody"}},
              "garbage": {"__key__": "garbage", "wav": b"RIFF....WAVEfmt not audio at all"}}
    whole = tar_shard(tmp_path / "whole.tar", ["greeting.wav", "weather.flac"], extra=broken)
    last = json.loads(planned(load_config(None, [f"input.uri={whole}", "input.format=webdataset"]))
                      .column("locator")[-1].as_py())
    tar_shard(inputs / "good.tar", ["meeting.mp3"])
    (inputs / "cut.tar").write_bytes(whole.read_bytes()[:last["start"] + last["members"][last["audio"]][0] + 3000])
    config = load_config(None, [f"input.uri={inputs}", "input.format=webdataset", f"output.uri={out}", *whisper_app])
    summary = run(config, serving)
    written = by_key(rows(out))
    assert sorted(written) == sorted(["clips/meeting", "clips/greeting", "no-audio", "garbage", f"@{last['start']}"])
    cut = f"{inputs / 'cut.tar'}"
    assert written["no-audio"]["error_class"] == "NoAudio" and f"{cut}#no-audio" in written["no-audio"]["error"]
    assert written["garbage"]["error_stage"] == "decode" and f"{cut}#garbage" in written["garbage"]["error"]
    rest = [r for k, r in written.items() if k.startswith("@")]
    assert len(rest) == 1 and rest[0]["error_class"] == "UnreadableShard" and cut in rest[0]["error"]
    assert written["clips/greeting"]["error_class"] is None and written["clips/meeting"]["error_class"] is None
    assert (summary.rows, summary.errors) == (5, 3)
    assert run(config, serving).rows == 0


def test_shards_on_s3_incrementally(whisper_app, s3, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="corpus")

    def upload(shard: Path, key: str) -> None:
        client.put_object(Bucket="corpus", Key=key, Body=shard.read_bytes())

    upload(tar_shard(tmp_path / "a.tar", ["greeting.wav"]), "wds/shard-000.tar")
    upload(hf_parquet(tmp_path / "a.parquet", ["note.m4a", "story.ogg"], rows_per_group=1), "hf/train-0.parquet")
    s3_options = [f"storage.endpoint_url={url}", *whisper_app]
    wds_config = load_config(None, ["input.uri=s3://corpus/wds/", "input.format=webdataset",
                                    f"output.uri={tmp_path / 'out-wds'}", *s3_options])
    pq_config = load_config(None, ["input.uri=s3://corpus/hf/", "input.format=parquet",
                                   f"output.uri={tmp_path / 'out-hf'}", *s3_options])
    assert run(wds_config, serving).rows == 1
    assert run(pq_config, serving).rows == 2
    # Sorted: the two row groups are decoded by two tasks, whose rows reach the writer in either order.
    assert sorted(r["source_uri"] for r in rows(tmp_path / "out-hf")) == ["s3://corpus/hf/train-0.parquet#0",
                                                                          "s3://corpus/hf/train-0.parquet#1"]
    assert run(wds_config, serving).rows == 0 and run(pq_config, serving).rows == 0

    upload(tar_shard(tmp_path / "b.tar", ["meeting.mp3"]), "wds/shard-001.tar")
    third = run(wds_config, serving)
    assert (third.rows, third.skipped) == (1, 1)
    written = rows(tmp_path / "out-wds")
    assert [r["source_uri"] for r in written if r["run_id"] == third.run_id] == \
        ["s3://corpus/wds/shard-001.tar#clips/meeting"]
    assert not any(r["error_class"] for r in written + rows(tmp_path / "out-hf"))
