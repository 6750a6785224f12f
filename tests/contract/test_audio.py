"""Tests for contract.audio: decoding any audio bytes to mono float32 at 16 kHz.

Everything but the committed samples (samples/audio) is generated here with
numpy + soundfile (PCM/FLAC/AIFF/Vorbis) or PyAV (mp3, opus, aac, video).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from contract.audio import (
    SAMPLE_RATE,
    DecodeError,
    decode,
    decode_with_info,
    duration_s,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "audio"

# Durations of the PCM that samples/make_samples.sh synthesised with espeak-ng
# (22.05 kHz) before converting/encoding each sample.
SAMPLE_SOURCE_DURATIONS = {
    "greeting.wav": 116003 / 22050,
    "weather.flac": 147283 / 22050,
    "meeting.mp3": 118807 / 22050,
    "story.ogg": 6.535374,
    "note.m4a": 5.820590,
    "lecture.wav": 39.628118,
}

FREQ = 440.0  # test tone, representable at every rate tested (>= 8 kHz)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def tone(rate: int, seconds: float, freq: float = FREQ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def multichannel(rate: int, seconds: float, channels: int) -> np.ndarray:
    """(frames, channels): every channel has the 440 Hz tone; a 1 kHz tone is
    added with alternating sign, so it cancels exactly in the channel average
    when ``channels`` is even."""
    base = tone(rate, seconds)
    other = tone(rate, seconds, freq=1000.0, amp=0.3)
    cols = [base + (other if c % 2 == 0 else -other) for c in range(channels)]
    return np.stack(cols, axis=1)


def sf_bytes(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def pyav_bytes(
    x: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    *,
    video: str | None = None,
    video_only: bool = False,
) -> bytes:
    """Encode x ((frames,) or (frames, channels) float32) with PyAV."""
    if x.ndim == 1:
        x = x[:, None]
    layout = {1: "mono", 2: "stereo"}[x.shape[1]]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        vstream = None
        if video is not None:
            vstream = out.add_stream(video, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = None if video_only else out.add_stream(codec, rate=rate, layout=layout)
        if vstream is not None:
            n_video = int(round(10 * len(x) / rate))
            for i in range(n_video):
                img = np.full((48, 64, 3), (i * 20) % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        if astream is not None:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x.T, dtype=np.float32), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = 0
            for packet in astream.encode(frame):
                out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    return buf.getvalue()


def peak_hz(y: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spectrum)) * rate / len(y)


def band_amplitude(y: np.ndarray, freq: float, rate: int = SAMPLE_RATE) -> float:
    """Amplitude of the sinusoid at ``freq`` (least-squares fit of sin + cos,
    ignoring 10 ms at each end where resampler edge effects live)."""
    y = y[rate // 100 : len(y) - rate // 100].astype(np.float64)
    t = (np.arange(len(y)) + rate // 100) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef))


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def check_mono16k(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.float32
    assert y.ndim == 1
    assert y.flags.c_contiguous
    assert np.isfinite(y).all()
    assert float(np.abs(y).max()) <= 1.0


def check_tone(y: np.ndarray, seconds: float, *, amp: float = 0.5, tol_s: float = 0.05,
               amp_tol: float = 0.05) -> None:
    check_mono16k(y)
    assert abs(duration_s(y) - seconds) <= tol_s, (duration_s(y), seconds)
    assert abs(peak_hz(y) - FREQ) <= 2.0, peak_hz(y)
    assert band_amplitude(y, FREQ) == pytest.approx(amp, abs=amp_tol)


# --------------------------------------------------------------------------
# the committed samples
# --------------------------------------------------------------------------


def test_samples_folder_holds_only_the_transcribed_audio():
    transcripts = json.loads((REPO / "samples" / "transcripts.json").read_text())
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert names == sorted(transcripts) == sorted(SAMPLE_SOURCE_DURATIONS)
    assert all(isinstance(t, str) and len(t.split()) >= 8 for t in transcripts.values())
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 1_500_000


@pytest.mark.parametrize("name", sorted(SAMPLE_SOURCE_DURATIONS))
def test_decode_sample(name):
    data = (SAMPLES / name).read_bytes()
    y, truncated = decode_with_info(data)
    check_mono16k(y)
    assert truncated is False
    assert abs(duration_s(y) - SAMPLE_SOURCE_DURATIONS[name]) <= 0.05
    assert rms(y) > 0.02  # speech, not silence
    assert np.array_equal(decode(data), y)


def test_sample_formats_are_varied():
    expected = {
        "greeting.wav": ("WAV", 16000, 1),
        "weather.flac": ("FLAC", 44100, 2),
        "lecture.wav": ("WAV", 8000, 1),
    }
    for name, (fmt, rate, channels) in expected.items():
        info = sf.info(str(SAMPLES / name))
        assert (info.format, info.samplerate, info.channels) == (fmt, rate, channels)
    expected_av = {
        "meeting.mp3": ("mp3", 22050, 1),
        "story.ogg": ("opus", 48000, 1),
        "note.m4a": ("aac", 32000, 2),
    }
    for name, (codec, rate, channels) in expected_av.items():
        with av.open(str(SAMPLES / name)) as c:
            s = c.streams.audio[0]
            cc = s.codec_context
            found = (cc.codec.canonical_name, s.rate, cc.layout.nb_channels)
            assert found == (codec, rate, channels)
    assert duration_s(decode((SAMPLES / "lecture.wav").read_bytes())) > 25


# --------------------------------------------------------------------------
# rates, layouts, sample formats
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_rates_and_layouts(rate, channels, fmt):
    seconds = 1.0
    x = multichannel(rate, seconds, channels) if channels > 1 else tone(rate, seconds)
    y = decode(sf_bytes(x, rate, fmt=fmt, subtype="PCM_16"))
    check_tone(y, seconds, amp_tol=0.01)
    assert abs(len(y) - SAMPLE_RATE * seconds) <= 1
    if channels > 1:
        # The 1 kHz component cancels in the channel average.
        assert band_amplitude(y, 1000.0) < 1e-3


@pytest.mark.parametrize(
    "fmt,subtype,tol",
    [
        ("WAV", "PCM_U8", 0.01),
        ("WAV", "PCM_16", 1e-3),
        ("WAV", "PCM_24", 1e-3),
        ("WAV", "PCM_32", 1e-3),
        ("WAV", "FLOAT", 1e-3),
        ("WAV", "DOUBLE", 1e-3),
        ("WAVEX", "PCM_16", 1e-3),
        ("W64", "PCM_16", 1e-3),
        ("AIFF", "PCM_16", 1e-3),
        ("AU", "FLOAT", 1e-3),
        ("FLAC", "PCM_24", 1e-3),
        ("OGG", "VORBIS", 0.02),
        ("WAV", "ULAW", 0.01),
        ("WAV", "ALAW", 0.01),
        ("MAT5", "PCM_16", 1e-3),  # FFmpeg can't open these: libsndfile fallback
        ("MPC2K", "PCM_16", 1e-3),
    ],
)
def test_sample_formats(fmt, subtype, tol):
    rate = 22050
    x = multichannel(rate, 1.5, 2)
    y = decode(sf_bytes(x, rate, fmt=fmt, subtype=subtype))
    check_tone(y, 1.5, amp_tol=tol)
    assert band_amplitude(y, 1000.0) < max(tol, 2e-3)


def test_mulaw_8khz_wav():
    x = tone(8000, 2.0)
    data = sf_bytes(x, 8000, fmt="WAV", subtype="ULAW")
    assert sf.info(io.BytesIO(data)).subtype == "ULAW"
    y = decode(data)
    check_tone(y, 2.0, amp_tol=0.01)
    assert len(y) == 32000


def test_matches_reference_decode_and_resample():
    """The numpy WAV path and the FFmpeg path give what libsndfile + soxr give."""
    rate = 44100
    x = multichannel(rate, 2.0, 2)
    for subtype in ("PCM_16", "PCM_24"):
        data = sf_bytes(x, rate, subtype=subtype)
        ref_in, _ = sf.read(io.BytesIO(data), dtype="float32")
        ref = soxr.resample(ref_in.mean(axis=1), rate, SAMPLE_RATE, quality="HQ")
        y = decode(data)
        assert len(y) == len(ref)
        np.testing.assert_allclose(y, ref, atol=2e-6)


def test_16khz_mono_pcm_is_exact():
    x = (np.arange(-32768, 32768, 7, dtype=np.int32)).astype(np.int16)
    data = sf_bytes(x, SAMPLE_RATE, subtype="PCM_16")
    y = decode(data)
    np.testing.assert_array_equal(y, x.astype(np.float32) / 32768)


def test_bytearray_and_memoryview_input():
    data = sf_bytes(tone(22050, 1.0), 22050)
    y = decode(data)
    np.testing.assert_array_equal(decode(bytearray(data)), y)
    np.testing.assert_array_equal(decode(memoryview(data)), y)


def test_values_are_clipped_and_finite():
    rate = 16000
    x = 1.5 * np.sign(tone(rate, 1.0)).astype(np.float32)  # loud square wave
    x[100:200] = np.nan
    x[300] = np.inf
    for subtype in ("FLOAT", "DOUBLE"):
        y = decode(sf_bytes(x, rate, subtype=subtype))
        check_mono16k(y)
        assert float(y.max()) == 1.0 and float(y.min()) == -1.0
        assert np.all(y[100:200] == 0.0)


# --------------------------------------------------------------------------
# compressed formats and video, generated with PyAV
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "container,codec,rate,channels",
    [
        ("mp3", "libmp3lame", 44100, 2),
        ("mp3", "libmp3lame", 22050, 1),
        ("ogg", "libopus", 48000, 1),
        ("ogg", "libopus", 48000, 2),
        ("ipod", "aac", 32000, 2),  # .m4a
        ("adts", "aac", 44100, 1),  # raw .aac
        ("flac", "flac", 96000, 2),
        ("matroska", "libopus", 48000, 2),  # .mka / .webm-like
    ],
)
def test_compressed_formats(container, codec, rate, channels):
    seconds = 2.0
    x = multichannel(rate, seconds, channels) if channels > 1 else tone(rate, seconds)
    y = decode(pyav_bytes(x, rate, container, codec))
    check_tone(y, seconds, amp_tol=0.03)
    if channels > 1:
        assert band_amplitude(y, 1000.0) < 0.02


@pytest.mark.parametrize(
    "container,video,codec,rate",
    [
        ("mp4", "mpeg4", "aac", 44100),
        ("webm", "libvpx", "libopus", 48000),
    ],
)
def test_audio_track_of_a_video(container, video, codec, rate):
    seconds = 2.0
    data = pyav_bytes(multichannel(rate, seconds, 2), rate, container, codec, video=video)
    with av.open(io.BytesIO(data)) as c:  # the file really has both streams
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
    y = decode(data)
    check_tone(y, seconds, amp_tol=0.03)


def test_video_without_audio_stream():
    data = pyav_bytes(tone(44100, 1.0), 44100, "mp4", "aac", video="mpeg4", video_only=True)
    with pytest.raises(DecodeError, match="no audio stream"):
        decode(data)


def test_vbr_mp3_without_xing_header_decodes_fully():
    """libsndfile trusts an estimated length for such files and stops early
    (6.6 s of 20 s here); the decoder must return all of the audio."""
    rate, seconds = 44100, 20.0
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    bursts = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 0.25 * t) > 0)
    x = (0.4 * np.sin(2 * np.pi * FREQ * t) + 0.2 * bursts).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3", options={"write_xing": "0"}) as out:
        s = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)
    y = decode(buf.getvalue())
    check_mono16k(y)
    # No LAME header, so the encoder delay (~50 ms) is not trimmed.
    assert abs(duration_s(y) - seconds) <= 0.06
    assert abs(peak_hz(y[-SAMPLE_RATE:]) - FREQ) <= 2


def test_sample_rate_change_mid_stream():
    """Concatenated MP3s at 22.05 and 44.1 kHz: each part is resampled by its
    own rate (a single-rate decode would get the duration badly wrong)."""
    a = pyav_bytes(tone(22050, 2.0), 22050, "mp3", "libmp3lame")
    b = pyav_bytes(tone(44100, 3.0), 44100, "mp3", "libmp3lame")
    y = decode(a + b)
    check_mono16k(y)
    # The second file's header frame and encoder delay are not trimmed
    # (FFmpeg only honours the first file's gapless info): ~50 ms extra.
    assert abs(duration_s(y) - 5.0) <= 0.1
    assert abs(peak_hz(y[: 2 * SAMPLE_RATE]) - FREQ) <= 2
    assert abs(peak_hz(y[-3 * SAMPLE_RATE :]) - FREQ) <= 2


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_empty_input():
    with pytest.raises(DecodeError, match="empty"):
        decode(b"")


@pytest.mark.parametrize(
    "data",
    [
        b"hello world, this is not audio\n" * 40,
        b'{"uri": "s3://bucket/a.wav"}',
        b"<html><body>404 Not Found</body></html>",
        b"\x00" * 4096,
    ],
)
def test_text_and_junk_input(data):
    with pytest.raises(DecodeError, match="unsupported or corrupt audio"):
        decode(data)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes(seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=int(rng.integers(1, 100_000)), dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError):
        decode(data)


def test_truncated_files():
    wav = sf_bytes(tone(16000, 1.0), 16000)
    flac = sf_bytes(tone(16000, 1.0), 16000, fmt="FLAC")
    mp4 = pyav_bytes(tone(44100, 1.0), 44100, "mp4", "aac")  # index at the end
    for data in (wav[:30], flac[:40], mp4[: len(mp4) // 2]):
        with pytest.raises(DecodeError):
            decode(data)


def test_wav_without_samples():
    with pytest.raises(DecodeError, match="no audio"):
        decode(sf_bytes(np.zeros(0, dtype=np.float32), 16000))


def test_bad_arguments():
    data = sf_bytes(tone(16000, 1.0), 16000)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            decode(data, max_duration_s=bad)
    with pytest.raises(TypeError):
        decode("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# headers that lie, bounded memory, max_duration_s
# --------------------------------------------------------------------------


def peak_traced_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def with_huge_wav_sizes(data: bytes) -> bytes:
    b = bytearray(data)
    b[4:8] = struct.pack("<I", 0xFFFFFFF0)  # RIFF size
    i = b.index(b"data")
    b[i + 4 : i + 8] = struct.pack("<I", 0xFFFFFF00)  # ~4 GiB of samples
    return bytes(b)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wav_header_claiming_more_samples_than_present(subtype):
    data = with_huge_wav_sizes(sf_bytes(tone(44100, 1.0), 44100, subtype=subtype))
    result = {}
    peak = peak_traced_bytes(lambda: result.setdefault("y", decode(data)))
    check_tone(result["y"], 1.0, amp_tol=0.01)
    assert peak < 8_000_000, peak


def test_flac_streaminfo_claiming_more_samples_than_present():
    data = bytearray(sf_bytes(tone(44100, 1.0), 44100, fmt="FLAC"))
    assert data[:4] == b"fLaC"
    # STREAMINFO: 20 bits rate, 3 bits channels, 5 bits depth, 36 bits total.
    (word,) = struct.unpack(">Q", data[18:26])
    data[18:26] = struct.pack(">Q", word | ((1 << 36) - 1))
    result = {}
    peak = peak_traced_bytes(lambda: result.setdefault("y", decode(bytes(data))))
    check_tone(result["y"], 1.0, amp_tol=0.01)
    assert peak < 8_000_000, peak


def test_truncated_body_decodes_what_is_there():
    wav = sf_bytes(tone(16000, 2.0), 16000, subtype="PCM_24")
    y = decode(wav[: len(wav) // 2])
    check_tone(y, 1.0, amp_tol=0.01)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x, r: sf_bytes(x, r), id="wav16"),
        pytest.param(lambda x, r: sf_bytes(x, r, subtype="PCM_24"), id="wav24"),
        pytest.param(lambda x, r: sf_bytes(x, r, fmt="FLAC"), id="flac"),
        pytest.param(lambda x, r: sf_bytes(x, r, fmt="AIFF"), id="aiff"),
        pytest.param(lambda x, r: sf_bytes(x, r, fmt="W64"), id="w64"),
        pytest.param(lambda x, r: sf_bytes(x, r, fmt="MAT5", subtype="PCM_16"), id="mat5"),
    ],
)
@pytest.mark.parametrize("rate", [16000, 44100])
def test_max_duration_lossless(make, rate):
    data = make(multichannel(rate, 3.0, 2), rate)
    y, truncated = decode_with_info(data, max_duration_s=1.0)
    check_tone(y, 1.0, amp_tol=0.01)
    assert truncated is True and len(y) == 16000
    y, truncated = decode_with_info(data, max_duration_s=1.2345)
    assert truncated is True and abs(len(y) - 19752) <= 1
    y, truncated = decode_with_info(data, max_duration_s=2.98)  # cut 20 ms before the end
    assert truncated is True and len(y) == 47680
    y, truncated = decode_with_info(data, max_duration_s=3.0)
    assert truncated is False and len(y) == 48000
    y, truncated = decode_with_info(data, max_duration_s=10.0)
    assert truncated is False and len(y) == 48000
    np.testing.assert_array_equal(decode(data, max_duration_s=1.0), decode(data)[:16000])


@pytest.mark.parametrize(
    "container,codec,rate",
    [("ipod", "aac", 32000), ("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000)],
)
def test_max_duration_lossy(container, codec, rate):
    data = pyav_bytes(tone(rate, 3.0), rate, container, codec)
    y, truncated = decode_with_info(data, max_duration_s=1.0)
    check_tone(y, 1.0, amp_tol=0.03)
    assert truncated is True and len(y) == 16000
    y, truncated = decode_with_info(data, max_duration_s=10.0)
    assert truncated is False and abs(duration_s(y) - 3.0) <= 0.05


def test_max_duration_bounds_memory():
    """A long file decoded with a small max_duration_s is not decoded whole."""
    rate = 48000
    seconds = 120
    t = np.arange(rate * seconds) / rate
    x = (0.5 * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)
    flac = sf_bytes(x, rate, fmt="FLAC")  # small: a pure tone compresses well
    wav = sf_bytes(x, rate)
    del t, x
    for data in (flac, wav):
        result = {}
        peak = peak_traced_bytes(
            lambda: result.setdefault("r", decode_with_info(data, max_duration_s=1.0))
        )
        y, truncated = result["r"]
        assert truncated is True and len(y) == 16000
        # Decoding all of it would need > 23 MB (5.76 M samples of float32).
        assert peak < 3_000_000, peak


# --------------------------------------------------------------------------
# module hygiene
# --------------------------------------------------------------------------


def test_decoder_routing():
    """Plain PCM WAV takes the numpy path, other WAVs go to a decoder, and
    formats FFmpeg cannot open fall back to libsndfile. Every decoder returns
    audio or raises DecodeError saying why not."""
    from contract import audio

    x = tone(22050, 0.5)
    for subtype in ("PCM_U8", "PCM_16", "PCM_32", "FLOAT", "DOUBLE"):
        assert audio._decode_wav_fast(sf_bytes(x, 22050, subtype=subtype), None) is not None
    for fmt, subtype in (("WAV", "PCM_24"), ("WAV", "ULAW"), ("FLAC", "PCM_16")):
        with pytest.raises(DecodeError):
            audio._decode_wav_fast(sf_bytes(x, 22050, fmt=fmt, subtype=subtype), None)
    mat5 = sf_bytes(x, 22050, fmt="MAT5", subtype="PCM_16")
    with pytest.raises(DecodeError):
        audio._decode_av(mat5, None)
    assert audio._decode_soundfile(mat5, None) is not None
    check_tone(decode(mat5), 0.5, amp_tol=1e-3)


def test_when_no_decoder_can_the_error_says_why_each_failed():
    with pytest.raises(DecodeError) as caught:
        decode(b"<html><body>404 Not Found</body></html>")
    message = str(caught.value)
    assert message.startswith("unsupported or corrupt audio: ")
    reasons = dict(part.split(": ", 1) for part in message.removeprefix("unsupported or corrupt audio: ").split("; "))
    assert list(reasons) == ["wav", "ffmpeg", "libsndfile"]
    assert reasons["wav"] == "not a RIFF/WAVE file" and all(reasons.values())


def test_duration_s():
    assert duration_s(np.zeros(24000, dtype=np.float32)) == 1.5
    assert SAMPLE_RATE == 16000


def test_import_is_light():
    code = (
        "import sys, contract.audio\n"
        "heavy = [m for m in ('ray', 'torch', 'av', 'librosa') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
