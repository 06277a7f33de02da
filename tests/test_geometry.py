import math

import pytest

from fastcnn.geometry import output_hw, output_size, pair, resolve_padding


@pytest.mark.parametrize("size", range(1, 12))
@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_padding_gives_ceil_output_and_extra_at_the_end(size, kernel, stride):
    (top, bottom), (left, right) = resolve_padding("same", (size, size), (kernel, kernel), (stride, stride))
    assert (top, bottom) == (left, right)
    assert output_size(size, kernel, stride, top + bottom) == math.ceil(size / stride)
    assert bottom - top in (0, 1)
    assert top + bottom == max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def test_padding_forms():
    assert resolve_padding("valid", (5, 5), (3, 3), (1, 1)) == ((0, 0), (0, 0))
    assert resolve_padding("SAME", (28, 28), (3, 3), (1, 1)) == ((1, 1), (1, 1))
    assert resolve_padding("same", (8, 8), (2, 2), (2, 2)) == ((0, 0), (0, 0))
    assert resolve_padding("same", (7, 7), (2, 2), (1, 1)) == ((0, 1), (0, 1))
    assert resolve_padding(2, (5, 5), (3, 3), (1, 1)) == ((2, 2), (2, 2))
    assert resolve_padding((1, 0), (5, 5), (3, 3), (1, 1)) == ((1, 1), (0, 0))


def test_output_hw():
    assert output_hw((28, 28), (3, 3), (1, 1), ((0, 0), (0, 0))) == (26, 26)
    assert output_hw((24, 24), (2, 2), (2, 2), ((0, 0), (0, 0))) == (12, 12)
    assert output_hw((7, 9), (2, 3), (1, 2), ((0, 0), (0, 0))) == (6, 4)


@pytest.mark.parametrize("value,expected", [(3, (3, 3)), ((2, 3), (2, 3)), ([1, 4], (1, 4))])
def test_pair_accepts(value, expected):
    assert pair(value, "kernel_size") == expected


@pytest.mark.parametrize("value,error,match", [
    (0, ValueError, r"Conv2D: `stride` must be >= 1, received 0"),
    ((2, -1), ValueError, r"must be >= 1, received \(2, -1\)"),
    (2.5, TypeError, r"must be an int or a pair of ints, received 2.5"),
    ((1, 2, 3), TypeError, r"must be an int or a pair of ints"),
    (True, TypeError, r"must be an int or a pair of ints, received True"),
])
def test_pair_rejects(value, error, match):
    with pytest.raises(error, match=match):
        pair(value, "stride", owner="Conv2D")


def test_unknown_padding_string():
    with pytest.raises(ValueError, match=r"unknown padding 'full'; expected 'valid', 'same'"):
        resolve_padding("full", (5, 5), (3, 3), (1, 1))
