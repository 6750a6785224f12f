"""Audio decoding: bytes of (almost) any audio/video file -> mono float32 at 16 kHz.

Pure functions, no Ray or torch: importing this module only pulls in numpy,
soundfile and soxr; PyAV (``av``) is imported lazily, the first time a file
needs it.

Strategy
--------
1. libsndfile (via ``soundfile``) is tried first.  It handles WAV/W64/RF64,
   AIFF, AU, FLAC, Ogg Vorbis, Ogg Opus and MP3 and is the fastest path.
2. Anything libsndfile cannot open (AAC/M4A, WebM, MP4/MKV video, ...) is
   decoded with PyAV (FFmpeg).  Only the first audio stream is demuxed, so a
   video's frames are never decoded.

Both paths decode block by block into a preallocated mono buffer (channels
are averaged on the fly), so peak memory is about the size of the mono signal
plus one block, and decoding stops early when ``max_duration_s`` is reached.
A header that claims far more samples than the file holds (a truncated
download, a lying FLAC STREAMINFO, ...) therefore never causes a huge
allocation: whatever is really there is decoded.

Resampling uses libsoxr (``soxr``) in one shot over the mono signal.  Quality
"MQ" (16-bit precision, flat passband to ~0.91*Nyquist) is used: it is
transparent for speech models working from 16 kHz audio and noticeably faster
than "HQ".  The result is clipped to [-1, 1].
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "SAMPLE_RATE",
    "DecodeError",
    "decode",
    "decode_with_info",
    "duration_s",
]

SAMPLE_RATE = 16000

# soxr quality recipe used for every rate conversion (see module docstring).
_SOXR_QUALITY = "MQ"

# Frames read from libsndfile per block (per channel).
_SF_BLOCK = 1 << 16

# Without a trustworthy length, never preallocate more than this many samples
# up front (the buffer grows geometrically as audio is actually decoded).
_MAX_PREALLOC = 1 << 24  # 16 Mi samples = 64 MiB of float32

# libsndfile subtypes that hold floating point samples (may contain NaN/inf).
_SF_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


class DecodeError(Exception):
    """The bytes could not be decoded as audio.

    The message says what was wrong (e.g. ``"empty file"``, ``"no audio
    stream"``, ``"unsupported or corrupt audio: ..."``); the caller adds the
    URI.
    """


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def decode(data: bytes, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode ``data`` to mono float32 samples at :data:`SAMPLE_RATE` Hz.

    Accepts wav, flac, mp3, ogg/oga/opus, m4a/aac, webm/mp4/mkv (the audio
    track of a video too), any sample rate, any channel count.  Channels are
    averaged.  The result is a 1-D C-contiguous float32 array in [-1, 1].

    If ``max_duration_s`` is given, at most that many seconds are decoded and
    returned (the rest of the file is not decoded); use
    :func:`decode_with_info` to learn whether the audio was cut.

    Raises :class:`DecodeError` for empty, non-audio or corrupt input.
    """
    audio, _ = decode_with_info(data, max_duration_s=max_duration_s)
    return audio


def decode_with_info(
    data: bytes, *, max_duration_s: float | None = None
) -> tuple[np.ndarray, bool]:
    """Like :func:`decode`, but return ``(audio, truncated)``.

    ``truncated`` is True when ``max_duration_s`` was given and the input
    holds more audio than that; the returned audio is then
    ``round(max_duration_s * SAMPLE_RATE)`` samples long (give or take one
    sample of resampler rounding).
    """
    if max_duration_s is not None:
        max_duration_s = float(max_duration_s)
        if not max_duration_s > 0 or math.isinf(max_duration_s):
            raise ValueError(f"max_duration_s must be a positive finite number, got {max_duration_s!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty file")

    result = _decode_soundfile(data, max_duration_s)
    if result is None:
        result = _decode_av(data, max_duration_s)
    segments, truncated, maybe_nonfinite = result

    out = _to_target_rate(segments)
    if out.size == 0:
        raise DecodeError("no audio samples")
    if max_duration_s is not None:
        # The decoders stopped at ceil(max_duration_s * source rate) samples;
        # resampling can leave one sample too many.
        limit = int(round(max_duration_s * SAMPLE_RATE))
        if out.size > limit:
            out = out[:limit]
    if maybe_nonfinite:
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(out, -1.0, 1.0, out=out)
    return out, truncated


def duration_s(audio: np.ndarray) -> float:
    """Duration in seconds of ``audio`` decoded by :func:`decode` (16 kHz)."""
    return len(audio) / SAMPLE_RATE


# --------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------


class _MonoBuffer:
    """Growable float32 buffer; ``segments`` groups samples by sample rate."""

    __slots__ = ("buf", "pos", "segments", "_seg_start", "_seg_rate")

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(max(int(capacity), 1024), dtype=np.float32)
        self.pos = 0
        self.segments: list[tuple[int, int, int]] = []  # (rate, start, end)
        self._seg_start = 0
        self._seg_rate = 0

    def reserve(self, n: int, rate: int) -> np.ndarray:
        """Return a writable view of the next ``n`` samples (at ``rate``)."""
        if rate != self._seg_rate:
            self._close_segment()
            self._seg_rate = rate
        end = self.pos + n
        if end > self.buf.size:
            new = np.empty(max(end, self.buf.size * 2), dtype=np.float32)
            new[: self.pos] = self.buf[: self.pos]
            self.buf = new
        return self.buf[self.pos : end]

    def commit(self, n: int) -> None:
        self.pos += n

    def _close_segment(self) -> None:
        if self.pos > self._seg_start:
            self.segments.append((self._seg_rate, self._seg_start, self.pos))
        self._seg_start = self.pos

    def finish(self) -> list[tuple[int, np.ndarray]]:
        self._close_segment()
        return [(rate, self.buf[a:b]) for rate, a, b in self.segments]


def _to_target_rate(segments: list[tuple[int, np.ndarray]]) -> np.ndarray:
    parts = []
    for rate, x in segments:
        if rate == SAMPLE_RATE:
            parts.append(x)
        else:
            parts.append(soxr.resample(x, rate, SAMPLE_RATE, quality=_SOXR_QUALITY))
    if not parts:
        return np.empty(0, dtype=np.float32)
    if len(parts) == 1:
        out = parts[0]
        if out.base is not None and out.size < out.base.size // 2:
            out = out.copy()  # don't keep a mostly-unused buffer alive
        return out
    return np.concatenate(parts)


def _max_frames(max_duration_s: float | None, rate: int) -> int | None:
    if max_duration_s is None:
        return None
    return int(math.ceil(max_duration_s * rate))


def _decode_soundfile(data, max_duration_s):
    """Decode with libsndfile; None if libsndfile cannot open the data."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:  # LibsndfileError, RuntimeError, TypeError, ...
        return None
    with f:
        rate, channels = f.samplerate, f.channels
        if rate <= 0 or channels <= 0:
            return None
        nonfinite = f.subtype in _SF_FLOAT_SUBTYPES
        limit = _max_frames(max_duration_s, rate)
        # f.frames comes from the header and may lie; it only sizes the first
        # allocation, and that is capped.
        declared = f.frames if 0 < f.frames < (1 << 62) else _SF_BLOCK
        capacity = declared if limit is None else min(declared, limit + 1)
        mono = _MonoBuffer(min(capacity, _MAX_PREALLOC))
        block = np.empty((_SF_BLOCK, channels), dtype=np.float32)
        total = 0
        truncated = False
        try:
            while True:
                want = _SF_BLOCK
                if limit is not None:
                    want = min(want, limit + 1 - total)
                got = f.read(want, dtype="float32", always_2d=True, out=block[:want])
                n = len(got)
                if n == 0:
                    break
                if limit is not None and total + n > limit:
                    n = limit - total
                    truncated = True
                if n > 0:
                    _downmix_into(got[:n], mono.reserve(n, rate))
                    mono.commit(n)
                    total += n
                if truncated or len(got) < want:
                    break
        except sf.LibsndfileError as e:
            if mono.pos == 0:
                raise DecodeError(f"unsupported or corrupt audio: {e}") from None
            # A read error part-way through: keep what was decoded.
    return mono.finish(), truncated, nonfinite


def _downmix_into(x: np.ndarray, dst: np.ndarray) -> None:
    """Average the columns of a (frames, channels) float32 block into dst."""
    ch = x.shape[1]
    if ch == 1:
        dst[:] = x[:, 0]
    elif ch == 2:
        np.add(x[:, 0], x[:, 1], out=dst)
        dst *= np.float32(0.5)
    else:
        np.add(x[:, 0], x[:, 1], out=dst)
        for c in range(2, ch):
            dst += x[:, c]
        dst *= np.float32(1.0 / ch)


# PyAV sample format -> (numpy dtype, offset, full scale).  Samples map to
# (value - offset) / full_scale.
_AV_FORMATS = {
    "u8": (np.uint8, 128.0, 128.0),
    "s16": (np.int16, 0.0, 32768.0),
    "s32": (np.int32, 0.0, 2147483648.0),
    "s64": (np.int64, 0.0, 9223372036854775808.0),
    "flt": (np.float32, 0.0, 1.0),
    "dbl": (np.float64, 0.0, 1.0),
}


def _decode_av(data, max_duration_s):
    """Decode with PyAV (FFmpeg)."""
    import av  # lazy: only needed for formats libsndfile does not handle

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise DecodeError(f"unsupported or corrupt audio: {_av_msg(e)}") from None
    except Exception as e:  # pragma: no cover - defensive
        raise DecodeError(f"unsupported or corrupt audio: {e}") from None

    with container:
        streams = [s for s in container.streams.audio if s.codec_context is not None]
        if not streams:
            raise DecodeError("no audio stream")
        # Only this stream is demuxed into packets that get decoded; the
        # packets of other streams (e.g. video) are read and dropped.
        stream = streams[0]

        capacity = _MAX_PREALLOC
        rate0 = stream.rate or stream.codec_context.sample_rate or 48000
        est = None
        if stream.duration is not None and stream.time_base is not None:
            est = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            est = container.duration / 1e6  # AV_TIME_BASE
        if est is not None and est > 0:
            capacity = int(est * rate0 * 1.05) + 4096
        if max_duration_s is not None:
            capacity = min(capacity, int(max_duration_s * rate0) + 4096)
        mono = _MonoBuffer(min(capacity, _MAX_PREALLOC))

        elapsed = 0.0  # seconds decoded so far (rates may change mid-stream)
        truncated = False
        full = False  # reached max_duration_s exactly; any more audio => truncated
        errors = 0
        nonfinite = stream.codec_context.name.startswith("pcm_f")
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    # Corrupt packet: skip it like the ffmpeg CLI does, but
                    # give up on data that never decodes.
                    errors += 1
                    if mono.pos == 0 and errors >= 8:
                        raise
                    continue
                for frame in frames:
                    n = frame.samples
                    rate = frame.sample_rate
                    if n <= 0 or rate <= 0:
                        continue
                    if full:
                        truncated = True
                        break
                    if max_duration_s is not None:
                        remaining = int(math.ceil((max_duration_s - elapsed) * rate - 1e-6))
                        if n > remaining:
                            n = max(remaining, 0)
                            truncated = True
                        elif n == remaining:
                            full = True
                    if n > 0:
                        _frame_into(frame, n, mono.reserve(n, rate))
                        mono.commit(n)
                        elapsed += n / rate
                    if truncated:
                        break
                if truncated:
                    break
        except av.FFmpegError as e:
            if mono.pos == 0:
                raise DecodeError(f"unsupported or corrupt audio: {_av_msg(e)}") from None
            # An error after some audio was decoded (e.g. a truncated file):
            # keep what was decoded, as for truncated WAV/FLAC.
        if mono.pos == 0:
            raise DecodeError("no audio samples")
    return mono.finish(), truncated, nonfinite


def _frame_into(frame, n: int, dst: np.ndarray) -> None:
    """Write the first n samples of an AudioFrame, channel-averaged, to dst."""
    fmt = frame.format
    name = fmt.name
    planar = fmt.is_planar
    base = name[:-1] if planar else name
    try:
        dtype, offset, scale = _AV_FORMATS[base]
    except KeyError:
        raise DecodeError(f"unsupported or corrupt audio: sample format {name!r}") from None
    ch = frame.layout.nb_channels
    planes = frame.planes
    if planar:
        dst[:] = np.frombuffer(planes[0], dtype=dtype, count=n)
        for c in range(1, ch):
            dst += np.frombuffer(planes[c], dtype=dtype, count=n)
    else:
        x = np.frombuffer(planes[0], dtype=dtype, count=n * ch)
        if ch == 1:
            dst[:] = x
        else:
            x = x.reshape(n, ch)
            dst[:] = x[:, 0]
            for c in range(1, ch):
                dst += x[:, c]
    if offset:
        dst -= np.float32(offset * ch)
    factor = 1.0 / (scale * ch)
    if factor != 1.0:
        dst *= np.float32(factor)


def _av_msg(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg)
