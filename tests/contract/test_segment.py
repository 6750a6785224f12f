import numpy as np
import pytest

from contract.segment import segment

SR = 16000


def speech_with_pauses(seconds: float, pauses_at: list[float]) -> np.ndarray:
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32)
    for p in pauses_at:
        audio[int((p - 0.1) * SR):int((p + 0.1) * SR)] = 0
    return audio


def check_cover(bounds, n, max_s):
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (s, e), (s2, _) in zip(bounds, bounds[1:]):
        assert e == s2
    for s, e in bounds:
        assert 0 < e - s <= max_s * SR


@pytest.mark.parametrize("seconds", [0.001, 1.0, 24.99, 25.0])
def test_short_audio_is_one_item(seconds):
    n = max(1, int(seconds * SR))
    assert segment(np.ones(n, np.float32), max_s=25.0) == [(0, n)]


def test_exact_multiple_has_no_empty_tail():
    n = 50 * SR
    bounds = segment(np.ones(n, np.float32), max_s=25.0, search_s=0)
    assert bounds == [(0, 25 * SR), (25 * SR, 50 * SR)]


def test_cuts_at_the_pause_near_the_limit():
    audio = speech_with_pauses(60.0, pauses_at=[22.0, 45.5])
    bounds = segment(audio, max_s=25.0, search_s=5.0)
    check_cover(bounds, len(audio), 25.0)
    cuts = [e / SR for _, e in bounds[:-1]]
    assert cuts[0] == pytest.approx(22.0, abs=0.1)
    assert cuts[1] == pytest.approx(45.5, abs=0.1)


def test_no_pause_in_window_still_bounded():
    audio = speech_with_pauses(100.0, pauses_at=[])
    bounds = segment(audio, max_s=25.0, search_s=5.0)
    check_cover(bounds, len(audio), 25.0)
    assert len(bounds) in (4, 5)


def test_long_silence_and_odd_lengths():
    rng = np.random.default_rng(1)
    for n in rng.integers(1, 200 * SR, 30):
        audio = rng.uniform(-1, 1, int(n)).astype(np.float32)
        check_cover(segment(audio, max_s=25.0), len(audio), 25.0)


def test_limit_too_small_is_refused():
    with pytest.raises(ValueError, match="max_s"):
        segment(np.ones(10, np.float32), max_s=0.001)
