"""Cutting decoded audio into items the model accepts: at most `max_s` long, cut at a quiet point.

Pure functions on numpy arrays; no Ray.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02  # energy is measured in 20 ms frames: short enough to find a gap between words


def segment(audio: np.ndarray, *, sample_rate: int = 16000, max_s: float,
            search_s: float = 5.0) -> list[tuple[int, int]]:
    """Sample offsets `[(start, end), ...]` covering the whole of `audio` with no gap and no empty piece.

    Each piece is at most `max_s` long. Where a cut is needed it goes in the quietest 20 ms frame within
    `search_s` before the limit, so a word is not split when a pause is near.
    """
    limit = int(max_s * sample_rate)
    frame = max(1, int(FRAME_S * sample_rate))
    if limit < 2 * frame:
        raise ValueError(f"max_s must be at least {2 * FRAME_S} s, got {max_s}")
    search = min(int(search_s * sample_rate), limit - frame)
    bounds, start = [], 0
    while len(audio) - start > limit:
        end = start + limit
        if search >= frame:
            end = _quietest_point(audio, end - search, end, frame)
        bounds.append((start, end))
        start = end
    if len(audio) > start:
        bounds.append((start, len(audio)))
    return bounds


def _quietest_point(audio: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """The middle of the lowest-energy frame in `audio[lo:hi]` (frames aligned to `hi`; latest on ties)."""
    frames = (hi - lo) // frame
    window = audio[hi - frames * frame:hi]
    energy = np.square(window, dtype=np.float32).reshape(frames, frame).sum(axis=1)
    from_end = int(np.argmin(energy[::-1]))  # argmin takes the first minimum: count from the end
    return hi - from_end * frame - frame // 2
