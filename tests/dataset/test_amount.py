from __future__ import annotations

import pytest

from llava.dataset.amount import AmountSlice, parse_amount


@pytest.mark.parametrize(
    "text, n, expected",
    [
        (":100%", 10, (0, 10)),
        (":10%", 200, (0, 20)),
        ("10:20%", 200, (20, 40)),
        ("10%:20%", 200, (20, 40)),
        ("50%:", 10, (5, 10)),
        ("3:7", 10, (3, 7)),
        (":50", 10, (0, 10)),  # row counts are clipped to the file
        ("[:25%]", 8, (0, 2)),
        (":33%", 3, (0, 1)),  # percent boundaries round to the closest row
    ],
)
def test_amount_slices(text, n, expected):
    assert parse_amount(text).bounds(n) == expected


@pytest.mark.parametrize("text", ["abc", "10%", "", "20:10%", ":150%", "5%:10", ":1.5", None, 50])
def test_amount_rejects(text):
    with pytest.raises(ValueError, match=r'expected ":X%" or "X1:X2%"'):
        parse_amount(text)


def test_amount_slice_empty_file():
    assert AmountSlice(10, 20, True).bounds(0) == (0, 0)
