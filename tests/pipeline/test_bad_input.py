"""Every kind of bad input the field throws at bulk jobs, through the whole pipeline: one outcome each."""

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf

from contract.audio import decode
from contract.config import load_config
from deployments.app import serving
from pipeline.run import run
from tests.conftest import SAMPLES

SPEECH = decode((SAMPLES / "greeting.wav").read_bytes())  # 16 kHz mono float32


def resampled(rate: int) -> np.ndarray:
    return np.interp(np.arange(int(len(SPEECH) * rate / 16000)) * 16000 / rate, np.arange(len(SPEECH)), SPEECH)


def video_with_audio() -> bytes:
    """An MP4 holding a small H.264-or-MPEG-4 video stream and an AAC track of the speech."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(int(len(SPEECH) / 16000 * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        pcm = (SPEECH * 32767).astype(np.int16)
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return buf.getvalue()


def lying_wav_header() -> bytes:
    """A WAV whose header claims about 4 GB of samples; one second is really there."""
    data = (SPEECH[:16000] * 32767).astype("<i2").tobytes()
    claimed = 0xFFFFFF00
    return (b"RIFF" + struct.pack("<I", claimed + 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000,
            32000, 2, 16) + b"data" + struct.pack("<I", claimed) + data)


def encoded(audio: np.ndarray, rate: int, **kwargs) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, **kwargs)
    return buf.getvalue()


# name -> (bytes maker, expected outcome: "answer", "no_speech" or an error class)
CASES = {
    "empty.wav": (lambda: b"", "DecodeError"),
    "truncated.flac": (lambda: (SAMPLES / "weather.flac").read_bytes()[:300], "DecodeError"),
    "notes.mp3": (lambda: b"these are my meeting notes, not audio\n" * 20, "DecodeError"),
    "random.ogg": (lambda: np.random.default_rng(0).bytes(20000), "DecodeError"),
    "clip.mp4": (video_with_audio, "answer"),
    "mulaw 8k.wav": (lambda: encoded(resampled(8000), 8000, format="WAV", subtype="ULAW"), "answer"),
    "six channels 96k.flac": (lambda: encoded(np.repeat(resampled(96000)[:, None], 6, axis=1) * 0.5, 96000,
                                              format="FLAC"), "answer"),
    # Nothing to hear: answered as such (empty, no_speech), not an error and not whisper's invented "you".
    "silence.wav": (lambda: encoded(np.zeros(16000 * 10, np.float32), 16000, format="WAV"), "no_speech"),
    "tiny.wav": (lambda: encoded(SPEECH[:80], 16000, format="WAV"), "no_speech"),  # 5 ms
    "two hours.wav": (lambda: encoded(np.zeros(8000 * 7200, np.int16), 8000, format="WAV", subtype="PCM_16"),
                      "AudioTooLong"),
    "lying header.wav": (lying_wav_header, "answer"),
    "Ünïcødé nämé.WAV": (lambda: (SAMPLES / "greeting.wav").read_bytes(), "answer"),
    "UPPER CASE.MP3": (lambda: (SAMPLES / "meeting.mp3").read_bytes(), "answer"),
}


@pytest.fixture(scope="module")
def outcome(whisper_app, tmp_path_factory):
    inputs, out = tmp_path_factory.mktemp("bad-in"), tmp_path_factory.mktemp("bad-out")
    for name, (make, _) in CASES.items():
        (inputs / name).write_bytes(make())
    config = load_config(None, [f"input.uri={inputs}", f"output.uri={out}", "audio.max_duration_s=600",
                                *whisper_app])
    summary = run(config, serving)
    return summary, pads.dataset(str(out)).to_table().to_pylist()


def test_every_bad_file_has_exactly_one_outcome(outcome):
    summary, rows = outcome
    names = [Path(r["source_uri"]).name for r in rows if r["segment_index"] in (None, 0)]
    assert sorted(names) == sorted(CASES)
    assert summary.files == len(CASES) and summary.rows == len(rows)


@pytest.mark.parametrize("name", list(CASES))
def test_outcome_is_the_expected_one(outcome, name):
    _, rows = outcome
    (row, *more) = [r for r in rows if Path(r["source_uri"]).name == name]
    expected = CASES[name][1]
    if expected == "answer":
        assert row["error_class"] is None, row["error"]
        assert row["answer"] and row["finish_reason"] == "stop"
    elif expected == "no_speech":
        assert (row["answer"], row["finish_reason"], row["error_class"]) == ("", "no_speech", None)
    else:
        assert not more
        assert row["error_class"] == expected and row["error_stage"] == "decode" and row["retryable"] is False
        assert name in row["error"]


def test_speech_survives_odd_containers_and_layouts(outcome):
    _, rows = outcome
    for name in ("clip.mp4", "mulaw 8k.wav", "six channels 96k.flac", "Ünïcødé nämé.WAV"):
        (row,) = [r for r in rows if Path(r["source_uri"]).name == name]
        assert "hello" in row["answer"].lower(), (name, row["answer"])
