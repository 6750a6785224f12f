import pytest

from contract.formats import get_format
from contract.pack import Budget, OverBudget, pack

STEP = get_format("step_audio_r1")
ITEM_25S = STEP.audio_tokens(25 * 16000)


def check_cover(windows, n):
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (_, end), (first, _) in zip(windows, windows[1:]):
        assert end == first  # no gap, no overlap
    assert all(end > first for first, end in windows)


def test_25s_item_costs_315_tokens():
    assert ITEM_25S == 315


def test_a_recording_that_fits_is_one_window():
    assert pack([315] * 10, budget=Budget(16384, None), max_tokens=8192, text_tokens=lambda n: 20) == [(0, 10)]


def test_unbounded_engine_takes_everything_without_counting_text():
    def never(n):
        raise AssertionError("text tokens asked of an unbounded engine")

    assert pack([1500] * 500, budget=Budget(None, None), max_tokens=10**6, text_tokens=never) == [(0, 500)]


def test_windows_are_as_large_as_the_context_allows():
    # 16k context, 4k answer: (16384 - 4096 - 20) // 315 = 38 items of 25 s, about 16 minutes, per request.
    windows = pack([ITEM_25S] * 100, budget=Budget(16384, None), max_tokens=4096, text_tokens=lambda n: 20)
    check_cover(windows, 100)
    assert [end - first for first, end in windows] == [38, 38, 24]
    for first, end in windows:
        assert 20 + ITEM_25S * (end - first) + 4096 <= 16384


def test_text_tokens_that_grow_with_items_are_counted():
    # Qwen2-Audio numbers its items ("Audio 1: ..."): every item adds text tokens too.
    windows = pack([100] * 9, budget=Budget(500, None), max_tokens=50, text_tokens=lambda n: 10 + 12 * n)
    check_cover(windows, 9)
    for first, end in windows:
        n = end - first
        assert 10 + 12 * n + 100 * n + 50 <= 500 < 10 + 12 * (n + 1) + 100 * (n + 1) + 50 or end == 9
    assert [end - first for first, end in windows] == [3, 3, 3]


def test_the_items_limit_holds():
    windows = pack([315] * 10, budget=Budget(10**6, 4), max_tokens=10, text_tokens=lambda n: 5)
    assert windows == [(0, 4), (4, 8), (8, 10)]


def test_uneven_items_are_taken_in_order():
    windows = pack([300, 50, 300, 300, 10], budget=Budget(700, None), max_tokens=0, text_tokens=lambda n: 0)
    assert windows == [(0, 3), (3, 5)]


def test_an_item_that_cannot_fit_alone_names_the_budget():
    with pytest.raises(OverBudget, match=r"max_tokens 4096 = 4431 tokens, over the engine's max_model_len 4096"):
        pack([315, 315], budget=Budget(4096, None), max_tokens=4096, text_tokens=lambda n: 20)


def test_no_items_no_windows():
    assert pack([], budget=Budget(100, 1), max_tokens=10, text_tokens=lambda n: 0) == []
