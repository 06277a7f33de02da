"""The judges themselves: every agreement and gradient test is only as strict as these."""

import numpy as np
import pytest

from fastcnn.testing import RTOL, assert_close, gradcheck, max_rel_error, numerical_grad


@pytest.mark.parametrize("actual,desired,expected", [
    ([1.0, 2.1], [1.0, 2.0], 0.05),  # max |diff| 0.1 over max |desired| 2
    ([0.0, -4.0], [0.5, -4.0], 0.125),
    ([0.0, 0.0], [0.0, 0.0], 0.0),
    ([0.0, 1e-30], [0.0, 0.0], np.inf),  # all-zero desired: only exact zeros pass
    ([np.nan, 1.0], [np.nan, 1.0], 0.0),
    ([np.nan, 1.0], [1.0, 1.0], np.inf),
    ([np.inf, 1.0], [np.inf, 2.0], np.inf),  # equal infinities do not excuse the rest
])
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # inf - inf
def test_max_rel_error_by_hand(actual, desired, expected):
    assert max_rel_error(np.array(actual), np.array(desired)) == pytest.approx(expected, rel=1e-12)


def test_max_rel_error_rejects_a_shape_mismatch():
    with pytest.raises(AssertionError, match=r"shape mismatch: \(2,\) vs \(2, 1\)"):
        max_rel_error(np.zeros(2), np.zeros((2, 1)))


def test_tolerances_are_the_documented_ones():
    assert RTOL == {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


@pytest.mark.parametrize("dtype,ok,bad", [(np.float64, 5e-11, 2e-10), (np.float32, 5e-5, 2e-4)])
def test_assert_close_applies_the_tolerance_of_the_dtype(dtype, ok, bad):
    desired = np.array([1.0, -2.0, 0.5])
    assert_close((desired + [0, 2 * ok, 0]).astype(dtype), desired)
    with pytest.raises(AssertionError, match=r"g: max relative error 2\.0\d*e-\d+ > 1\.0e-\d+"):
        assert_close((desired + [0, 2 * bad, 0]).astype(dtype), desired, name="g")


def test_assert_close_none_only_matches_none():
    assert_close(None, None)
    with pytest.raises(AssertionError, match="one side is None"):
        assert_close(None, np.zeros(2))


def square_forward(x, w):
    return x * x * w, (x, w)


def test_gradcheck_passes_a_correct_backward():
    rng = np.random.default_rng(0)
    gradcheck(square_forward, lambda dy, c: (2 * c[0] * c[1] * dy, c[0] * c[0] * dy),
              [rng.standard_normal(5), rng.standard_normal(5)])


@pytest.mark.parametrize("backward,index", [
    (lambda dy, c: (c[0] * c[1] * dy, c[0] * c[0] * dy), 0),  # d/dx off by a factor of 2
    (lambda dy, c: (2 * c[0] * c[1] * dy, c[0] * c[0] * dy * (1 + 1e-5)), 1),  # d/dw off by 1e-5
])
def test_gradcheck_names_the_wrong_gradient(backward, index):
    rng = np.random.default_rng(1)
    with pytest.raises(AssertionError, match=rf"gradient of input {index}: relative error"):
        gradcheck(square_forward, backward, [rng.standard_normal(5), rng.standard_normal(5)])


def test_numerical_grad_by_hand_and_contiguity():
    x = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(numerical_grad(lambda: float(np.sum(x ** 3)), x), 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])  # restored after probing
    with pytest.raises(ValueError, match="numerical_grad needs a contiguous array"):
        numerical_grad(lambda: 0.0, np.zeros((3, 4))[:, :2])
