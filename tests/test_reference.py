"""The reference implementation: gradients by finite differences, values by hand.

The reference is the ground truth every other implementation is compared
against, so here it is checked against things that are not code under test:
central differences (fastcnn.testing.gradcheck), numbers worked out by hand,
and independent NumPy formulas (sliding windows, ``x @ w + b``).
"""

import ast
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastcnn.reference as ref
from fastcnn import registry
from fastcnn.geometry import output_hw
from fastcnn.testing import assert_close, gradcheck, numerical_grad

VALID = ((0, 0), (0, 0))
SAME_ASYM = ((0, 1), (1, 0))  # the odd row/column on one side only, as "same" can produce
SYMMETRIC = ((1, 1), (1, 1))
PADDINGS = {"valid": VALID, "asym": SAME_ASYM, "sym": SYMMETRIC}

KERNELS = [(1, 1), (2, 2), (3, 3), (2, 3)]
STRIDES = [(1, 1), (2, 2), (3, 3), (2, 1)]
POOLS = [(2, 2), (3, 3), (2, 3)]
POOL_STRIDES = [(1, 1), (2, 2), (2, 1)]


def normal(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def away_from_zero(shape, seed=0):
    """Random values with ``|v| >= 0.1``, so kinks at 0 stay out of finite differences."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 1.0, size=shape)


def pad_nhwc(x, padding, value):
    return np.pad(x, ((0, 0), *padding, (0, 0)), constant_values=value)


def windows(x, size, stride, padding, value):
    """Independent oracle: every window as ``(N, OH, OW, C, KH, KW)``."""
    view = sliding_window_view(pad_nhwc(x, padding, value), size, axis=(1, 2))
    return view[:, :: stride[0], :: stride[1]]


# --- registration and the import rule -------------------------------------------------


def test_every_op_is_registered_under_reference():
    expected = {
        "conv2d", "dense", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "relu",
        "leaky_relu", "sigmoid", "tanh", "softmax", "flatten", "dropout",
        "softmax_cross_entropy", "sparse_categorical_crossentropy", "batch_norm", "add", "concatenate",
        "sgd_update", "adam_update", "rmsprop_update",
    }  # fmt: skip
    assert set(ref.OPS) == expected
    for op, (forward, backward) in ref.OPS.items():
        entry = registry.get(op, "reference")
        assert (entry.forward, entry.backward) == (forward, backward)
    assert registry.get("softmax_cross_entropy", "reference").backward is None


def test_reference_imports_only_numpy_and_the_registry():
    package = Path(ref.__file__).parent
    allowed = ("numpy", "fastcnn.registry", "fastcnn.reference")
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.startswith(allowed), f"{path.name} imports {module}"


# --- conv2d --------------------------------------------------------------------------


def conv_oracle(x, w, b, stride, padding):
    cols = windows(x, w.shape[:2], stride, padding, 0.0)  # (N, OH, OW, C, KH, KW)
    y = np.einsum("nijckl,klcf->nijf", cols, w)
    return y if b is None else y + b


@pytest.mark.parametrize("padding", PADDINGS.values(), ids=PADDINGS.keys())
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_conv2d_gradcheck_geometry(kernel, stride, padding):
    x = normal((1, 5, 7, 2), seed=1)
    w = normal((*kernel, 2, 3), seed=2)
    b = normal((3,), seed=3)
    forward = partial(ref.conv2d_forward, stride=stride, padding=padding)
    y, _ = forward(x, w, b)
    assert y.shape == (1, *output_hw((5, 7), kernel, stride, padding), 3)
    gradcheck(forward, ref.conv2d_backward, [x, w, b])


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("N", [1, 2])
def test_conv2d_gradcheck_batch_channels_bias(N, C, use_bias):
    x = normal((N, 5, 5, C), seed=4)
    w = normal((3, 2, C, 2), seed=5)
    b = normal((2,), seed=6) if use_bias else None
    forward = partial(ref.conv2d_forward, stride=(2, 1), padding=SAME_ASYM)
    gradcheck(forward, ref.conv2d_backward, [x, w, b])
    y, cache = forward(x, w, b)
    _, _, db = ref.conv2d_backward(normal(y.shape), cache)
    assert (db is None) == (not use_bias)


@pytest.mark.parametrize("padding", PADDINGS.values(), ids=PADDINGS.keys())
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_conv2d_forward_matches_window_oracle(kernel, stride, padding):
    x, w, b = normal((2, 7, 7, 3), seed=7), normal((*kernel, 3, 4), seed=8), normal((4,), seed=9)
    y, _ = ref.conv2d_forward(x, w, b, stride=stride, padding=padding)
    assert_close(y, conv_oracle(x, w, b, stride, padding))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_sobel_tutorial_example(dtype):
    patch = np.array([[0, 50, 0], [0, 80, 31], [33, 90, 0]], dtype=dtype)
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=dtype)
    y, _ = ref.conv2d_forward(
        patch.reshape(1, 3, 3, 1), sobel.reshape(3, 3, 1, 1), None, stride=(1, 1), padding=VALID
    )
    # 2*31 - 33: only the right column's 31 and the bottom-left 33 survive the zeros.
    assert y.shape == (1, 1, 1, 1)
    assert y[0, 0, 0, 0] == 29


def test_conv2d_padding_and_stride_by_hand():
    x = np.ones((1, 3, 3, 1))
    w = np.ones((2, 2, 1, 1))
    y, _ = ref.conv2d_forward(x, w, np.array([0.5]), stride=(2, 2), padding=SYMMETRIC)
    # Windows start at padded rows/cols 0 and 2: they see 1, 2, 2 and 4 real ones.
    np.testing.assert_array_equal(y[0, :, :, 0], [[1.5, 2.5], [2.5, 4.5]])


# --- dense ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("N", [1, 2])
def test_dense_gradcheck(N, use_bias):
    b = normal((3,), seed=12) if use_bias else None
    gradcheck(ref.dense_forward, ref.dense_backward, [normal((N, 5), 10), normal((5, 3), 11), b])


def test_dense_by_hand():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y, cache = ref.dense_forward(x, w, np.array([0.5, 0.0, -1.0]))
    np.testing.assert_array_equal(y, [[9.5, 12.0, 14.0]])
    dx, dw, db = ref.dense_backward(np.array([[1.0, 0.0, -1.0]]), cache)
    np.testing.assert_array_equal(dx, [[-2.0, -2.0]])
    np.testing.assert_array_equal(dw, [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0]])
    np.testing.assert_array_equal(db, [1.0, 0.0, -1.0])


def test_dense_matches_matmul():
    x, w, b, dy = normal((4, 6), 13), normal((6, 5), 14), normal((5,), 15), normal((4, 5), 16)
    y, cache = ref.dense_forward(x, w, b)
    assert_close(y, x @ w + b)
    dx, dw, db = ref.dense_backward(dy, cache)
    assert_close(dx, dy @ w.T)
    assert_close(dw, x.T @ dy)
    assert_close(db, dy.sum(axis=0))


# --- pooling -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("padding", PADDINGS.values(), ids=PADDINGS.keys())
@pytest.mark.parametrize("stride", POOL_STRIDES, ids=str)
@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_pool_gradcheck(kind, pool, stride, padding):
    # Continuous random data: no ties, so argmax is locally constant.
    x = normal((1, 5, 7, 2), seed=20)
    forward, backward = {
        "max": (ref.max_pool2d_forward, ref.max_pool2d_backward),
        "avg": (ref.avg_pool2d_forward, ref.avg_pool2d_backward),
    }[kind]
    forward = partial(forward, pool_size=pool, stride=stride, padding=padding)
    y, _ = forward(x)
    assert y.shape == (1, *output_hw((5, 7), pool, stride, padding), 2)
    gradcheck(forward, backward, [x])


@pytest.mark.parametrize("padding", PADDINGS.values(), ids=PADDINGS.keys())
@pytest.mark.parametrize("stride", POOL_STRIDES, ids=str)
@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_pool_forward_matches_window_oracle(pool, stride, padding):
    x = normal((2, 7, 7, 3), seed=21)
    kwargs = dict(pool_size=pool, stride=stride, padding=padding)
    y_max, _ = ref.max_pool2d_forward(x, **kwargs)
    assert_close(y_max, windows(x, pool, stride, padding, -np.inf).max(axis=(4, 5)))
    sums = windows(x, pool, stride, padding, 0.0).sum(axis=(4, 5))
    counts = windows(np.ones_like(x), pool, stride, padding, 0.0).sum(axis=(4, 5))
    y_avg, _ = ref.avg_pool2d_forward(x, **kwargs)
    assert_close(y_avg, sums / counts)


def test_max_pool_4x4_ties_send_gradient_to_first_max():
    x = np.array([[1, 3, 2, 2], [3, 0, 2, 1], [4, 4, 1, 5], [0, 2, 5, 3]], dtype=np.float64)
    x = x.reshape(1, 4, 4, 1)
    y, cache = ref.max_pool2d_forward(x, pool_size=(2, 2), stride=(2, 2), padding=VALID)
    np.testing.assert_array_equal(y[0, :, :, 0], [[3, 2], [4, 5]])
    dx = ref.max_pool2d_backward(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1), cache)
    # Every window is tied; each gradient lands on its window's first max in row-major order.
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[2, 0], expected[2, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_max_pool_overlapping_windows_accumulate_on_first_max():
    x = np.array([1.0, 3.0, 3.0, 2.0]).reshape(1, 1, 4, 1)
    y, cache = ref.max_pool2d_forward(x, pool_size=(1, 2), stride=(1, 1), padding=VALID)
    np.testing.assert_array_equal(y.ravel(), [3, 3, 3])
    dx = ref.max_pool2d_backward(np.ones((1, 1, 3, 1)), cache)
    # The tied middle window picks index 1, so index 1 collects two gradients.
    np.testing.assert_array_equal(dx.ravel(), [0, 2, 1, 0])


def test_max_pool_pads_with_minus_infinity():
    x = np.array([[-5.0, -3.0], [-4.0, -6.0]]).reshape(1, 2, 2, 1)
    y, cache = ref.max_pool2d_forward(x, pool_size=(2, 2), stride=(1, 1), padding=SYMMETRIC)
    # Zero padding would make every border output 0; -inf padding never wins.
    np.testing.assert_array_equal(y[0, :, :, 0], [[-5, -3, -3], [-4, -3, -3], [-4, -4, -6]])
    dx = ref.max_pool2d_backward(np.ones((1, 3, 3, 1)), cache)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 4], [3, 1]])


def test_avg_pool_divides_by_unpadded_count():
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y, cache = ref.avg_pool2d_forward(x, pool_size=(2, 2), stride=(2, 2), padding=((0, 1), (0, 1)))
    np.testing.assert_array_equal(y[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])
    dx = ref.avg_pool2d_backward(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1), cache)
    np.testing.assert_array_equal(
        dx[0, :, :, 0], [[0.25, 0.25, 1.0], [0.25, 0.25, 1.0], [1.5, 1.5, 4.0]]
    )


def test_avg_pool_3x3_same_padding_corners_and_edges():
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y, _ = ref.avg_pool2d_forward(x, pool_size=(3, 3), stride=(1, 1), padding=SYMMETRIC)
    # Corner windows hold 4 real cells, edges 6, the centre 9.
    expected = [[3.0, 3.5, 4.0], [4.5, 5.0, 5.5], [6.0, 6.5, 7.0]]
    np.testing.assert_array_equal(y[0, :, :, 0], expected)


def test_global_avg_pool():
    x = normal((2, 3, 5, 4), seed=22)
    y, _ = ref.global_avg_pool2d_forward(x)
    assert_close(y, x.mean(axis=(1, 2)))
    gradcheck(ref.global_avg_pool2d_forward, ref.global_avg_pool2d_backward, [x])


# --- activations, flatten, dropout ---------------------------------------------------

ELEMENTWISE = {
    "relu": (ref.relu_forward, ref.relu_backward),
    "leaky_relu_0.1": (partial(ref.leaky_relu_forward, alpha=0.1), ref.leaky_relu_backward),
    "leaky_relu_0.3": (partial(ref.leaky_relu_forward, alpha=0.3), ref.leaky_relu_backward),
    "sigmoid": (ref.sigmoid_forward, ref.sigmoid_backward),
    "tanh": (ref.tanh_forward, ref.tanh_backward),
    "softmax": (ref.softmax_forward, ref.softmax_backward),
    "flatten": (ref.flatten_forward, ref.flatten_backward),
}


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_gradcheck(name):
    forward, backward = ELEMENTWISE[name]
    gradcheck(forward, backward, [away_from_zero((2, 3, 2, 3), seed=30)])


def test_relu_and_leaky_relu_by_hand():
    x = np.array([-2.0, 0.0, 3.0])
    dy = np.array([1.0, 1.0, 1.0])
    y, cache = ref.relu_forward(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(ref.relu_backward(dy, cache), [0.0, 0.0, 1.0])  # 0 at x == 0
    y, cache = ref.leaky_relu_forward(x, alpha=0.25)
    np.testing.assert_array_equal(y, [-0.5, 0.0, 3.0])
    np.testing.assert_array_equal(ref.leaky_relu_backward(dy, cache), [0.25, 0.25, 1.0])


@pytest.mark.filterwarnings("error")  # an overflow in exp would be a RuntimeWarning
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_tanh_softmax_values_and_extremes(dtype):
    x = np.array([[-1e4, -1.0, 0.0, 1.0, 1e4]], dtype=dtype)
    y, _ = ref.sigmoid_forward(x)
    e = math.exp(-1.0)
    assert_close(y, np.array([[0.0, e / (1 + e), 0.5, 1 / (1 + e), 1.0]]), dtype=dtype)
    y, _ = ref.tanh_forward(x)
    assert_close(y, np.array([[-1.0, -math.tanh(1.0), 0.0, math.tanh(1.0), 1.0]]), dtype=dtype)
    y, _ = ref.softmax_forward(np.array([[1.0, 2.0, 3.0], [1e4, 1e4, -1e4]], dtype=dtype))
    s = math.exp(1) + math.exp(2) + math.exp(3)
    expected = [[math.exp(1) / s, math.exp(2) / s, math.exp(3) / s], [0.5, 0.5, 0.0]]
    assert_close(y, np.array(expected), dtype=dtype)


def test_flatten_is_c_order():
    x = normal((2, 3, 4, 5), seed=31)
    y, cache = ref.flatten_forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    np.testing.assert_array_equal(ref.flatten_backward(y, cache), x)


def test_dropout_gradcheck_with_fixed_mask():
    # A fresh generator with the same seed on every call keeps the mask fixed.
    forward = lambda x: ref.dropout_forward(x, rate=0.4, rng=np.random.default_rng(5))  # noqa: E731
    gradcheck(forward, ref.dropout_backward, [normal((2, 3, 4), seed=32)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.9])
def test_dropout_follows_the_contract_bit_for_bit(rate, dtype):
    x, dy = normal((3, 4, 5), seed=33, dtype=dtype), normal((3, 4, 5), seed=34, dtype=dtype)
    rng = np.random.default_rng(11)
    y, cache = ref.dropout_forward(x, rate=rate, rng=rng)
    twin = np.random.default_rng(11)
    raw = [int(v) for v in twin.bit_generator.random_raw(30)]  # 60 elements: 30 draws, two 32-bit halves each
    bits = np.array([half for v in raw for half in (v & 0xFFFFFFFF, v >> 32)]).reshape(x.shape)
    keep = bits >= round(rate * 2**32)
    assert 0.5 * rate < 1 - keep.mean() < min(1.5 * rate, 1)  # about `rate` of them dropped
    scale = dtype(1.0 / (1.0 - rate))
    np.testing.assert_array_equal(y, np.where(keep, x * scale, 0))
    np.testing.assert_array_equal(ref.dropout_backward(dy, cache), np.where(keep, dy * scale, 0))
    assert rng.bit_generator.random_raw() == twin.bit_generator.random_raw()  # exactly 30 draws consumed


def test_dropout_rate_zero_is_identity_without_a_draw():
    x, dy = normal((2, 3)), normal((2, 3), seed=1)
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    y, cache = ref.dropout_forward(x, rate=0.0, rng=rng)
    assert y is x
    assert rng.bit_generator.state == before
    np.testing.assert_array_equal(ref.dropout_backward(dy, cache), dy)


# --- batch_norm, add, concatenate ----------------------------------------------------


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 4)], ids=["2d", "4d"])
def test_batch_norm_gradcheck(shape, mode, affine):
    C = shape[-1]
    x = normal(shape, seed=40) + normal((C,), seed=41)
    gamma, beta = (normal((C,), seed=42), normal((C,), seed=43)) if affine else (None, None)
    stats = {} if mode == "training" else {"mean": normal((C,), seed=44), "var": 0.5 + normal((C,), seed=45) ** 2}
    forward = partial(ref.batch_norm_forward, epsilon=1e-3, **stats)
    gradcheck(forward, ref.batch_norm_backward, [x, gamma, beta], seed=46)
    _, cache = forward(x, gamma, beta)
    _, dgamma, dbeta = ref.batch_norm_backward(normal(shape, seed=47), cache)
    assert (dgamma is None, dbeta is None) == (not affine, not affine)


def test_batch_norm_by_hand():
    # One channel of [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    y, (mean, var, *_) = ref.batch_norm_forward(x, np.array([2.0]), np.array([0.5]), epsilon=0.5)
    assert (mean[0], var[0]) == (3.0, 3.5)
    np.testing.assert_allclose(y[:, 0], 2.0 * (x[:, 0] - 3.0) / 2.0 + 0.5)  # sqrt(3.5 + 0.5) = 2
    y, _ = ref.batch_norm_forward(x, None, None, np.array([1.0]), np.array([3.0]), epsilon=1.0)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 1.0) / 2.0)  # inference: the given statistics


@pytest.mark.parametrize("n_inputs", [2, 3])
def test_add_gradcheck_and_values(n_inputs):
    xs = [normal((2, 3, 2), seed=50 + k) for k in range(n_inputs)]
    gradcheck(ref.add_forward, ref.add_backward, xs)
    np.testing.assert_allclose(ref.add_forward(*xs)[0], sum(xs))


@pytest.mark.parametrize("axis", [1, 3])
def test_concatenate_gradcheck_and_values(axis):
    shapes = [(2, 3, 2, 2), (2, 3, 2, 1)] if axis == 3 else [(2, 1, 2, 2), (2, 3, 2, 2)]
    xs = [normal(shape, seed=60 + k) for k, shape in enumerate(shapes)]
    forward = partial(ref.concatenate_forward, axis=axis)
    gradcheck(forward, ref.concatenate_backward, xs)
    np.testing.assert_array_equal(forward(*xs)[0], np.concatenate(xs, axis=axis))


# --- softmax_cross_entropy -----------------------------------------------------------


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    logits = normal((3, 5), seed=40) * 3
    labels = np.array([0, 4, 2])
    loss, dlogits = ref.softmax_cross_entropy(logits, labels)
    numeric = numerical_grad(lambda: ref.softmax_cross_entropy(logits, labels)[0], logits)
    assert_close(dlogits, numeric, rtol=1e-7)
    assert isinstance(loss, float)


def test_softmax_cross_entropy_by_hand():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    loss, dlogits = ref.softmax_cross_entropy(logits, np.array([2, 1]))
    s = math.exp(1) + math.exp(2) + math.exp(3)
    assert loss == pytest.approx((-math.log(math.exp(3) / s) + math.log(3)) / 2, rel=1e-14)
    expected = np.array(
        [[math.exp(1) / s, math.exp(2) / s, math.exp(3) / s - 1], [1 / 3, 1 / 3 - 1, 1 / 3]]
    ) / 2
    assert_close(dlogits, expected)


def test_saturated_softmax_gradients_keep_full_relative_precision():
    # Row [0, -30, -40]: y[0] rounds to 1 - 1e-13, so 1 - y[0] computed by subtraction
    # would keep ~3 digits. The exact gradients, written with the small terms only:
    a, b = math.exp(-30), math.exp(-40)
    s = 1 + a + b
    y = np.array([1 / s, a / s, b / s])
    dy = np.array([0.5, -1.0, 2.0])
    # dx_i = y_i * sum_j y_j (dy_i - dy_j)
    expected = [y[i] * sum(y[j] * (dy[i] - dy[j]) for j in range(3)) for i in range(3)]
    _, cache = ref.softmax_forward(np.array([[0.0, -30.0, -40.0]]))
    assert_close(ref.softmax_backward(dy[None], cache)[0], np.array(expected), rtol=1e-13)
    _, dlogits = ref.softmax_cross_entropy(np.array([[0.0, -30.0, -40.0]]), np.array([0]))
    assert_close(dlogits[0], np.array([-(a + b) / s, a / s, b / s]), rtol=1e-13)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    loss, dlogits = ref.softmax_cross_entropy(logits, np.array([1, 0]))
    # Row 0 misses by 2e4; row 1 misses by 2e4 and splits its mass over two classes.
    assert loss == pytest.approx((2e4 + 2e4 + math.log(2)) / 2, rel=1e-6)
    assert dlogits.dtype == dtype
    assert_close(dlogits, np.array([[0.5, -0.5, 0.0], [-0.5, 0.25, 0.25]]), dtype=dtype)


# --- every op: float32 stays float32, non-contiguous input is fine --------------------

#: op -> (forward with its hyperparameters bound, backward, input shapes).
OP_CASES = {
    "conv2d": (
        partial(ref.conv2d_forward, stride=(2, 1), padding=SAME_ASYM),
        ref.conv2d_backward,
        [(2, 7, 7, 3), (3, 2, 3, 4), (4,)],
    ),
    "dense": (ref.dense_forward, ref.dense_backward, [(2, 5), (5, 3), (3,)]),
    "max_pool2d": (
        partial(ref.max_pool2d_forward, pool_size=(2, 3), stride=(2, 2), padding=SAME_ASYM),
        ref.max_pool2d_backward,
        [(2, 7, 7, 3)],
    ),
    "avg_pool2d": (
        partial(ref.avg_pool2d_forward, pool_size=(3, 3), stride=(2, 2), padding=SYMMETRIC),
        ref.avg_pool2d_backward,
        [(2, 7, 7, 3)],
    ),
    "global_avg_pool2d": (
        ref.global_avg_pool2d_forward, ref.global_avg_pool2d_backward, [(2, 7, 7, 3)]
    ),
    "relu": (ref.relu_forward, ref.relu_backward, [(2, 3, 4)]),
    "leaky_relu": (
        partial(ref.leaky_relu_forward, alpha=0.1), ref.leaky_relu_backward, [(2, 3, 4)]
    ),
    "sigmoid": (ref.sigmoid_forward, ref.sigmoid_backward, [(2, 3, 4)]),
    "tanh": (ref.tanh_forward, ref.tanh_backward, [(2, 3, 4)]),
    "softmax": (ref.softmax_forward, ref.softmax_backward, [(3, 5)]),
    "flatten": (ref.flatten_forward, ref.flatten_backward, [(2, 3, 3, 2)]),
    "dropout": (
        lambda x: ref.dropout_forward(x, rate=0.5, rng=np.random.default_rng(9)),
        ref.dropout_backward,
        [(2, 3, 4)],
    ),
    "batch_norm": (partial(ref.batch_norm_forward, epsilon=1e-3), ref.batch_norm_backward,
                   [(2, 3, 3, 4), (4,), (4,)]),
    "add": (ref.add_forward, ref.add_backward, [(2, 3, 4), (2, 3, 4)]),
    "concatenate": (partial(ref.concatenate_forward, axis=2), ref.concatenate_backward, [(2, 3, 4), (2, 3, 2)]),
}


def strided(shape, seed, dtype):
    """A non-contiguous view (every other element of the last axis) with the given shape."""
    wide = normal((*shape[:-1], 2 * shape[-1]), seed=seed, dtype=dtype)
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


def run_op(op, inputs, dy_seed=50):
    forward, backward, _ = OP_CASES[op]
    y, cache = forward(*inputs)
    dy = normal(y.shape, seed=dy_seed, dtype=y.dtype)
    grads = backward(dy, cache)
    return y, grads if isinstance(grads, tuple) else (grads,)


@pytest.mark.parametrize("op", OP_CASES)
def test_float32_in_float32_out(op):
    shapes = OP_CASES[op][2]
    inputs = [normal(shape, seed=i, dtype=np.float32) for i, shape in enumerate(shapes)]
    y, grads = run_op(op, inputs)
    assert y.dtype == np.float32
    assert [g.dtype for g in grads] == [np.float32] * len(shapes)
    assert [g.shape for g in grads] == [tuple(s) for s in shapes]


def test_float32_softmax_cross_entropy():
    logits = normal((4, 3), dtype=np.float32)
    loss, dlogits = ref.softmax_cross_entropy(logits, np.array([0, 1, 2, 1]))
    assert isinstance(loss, float)
    assert dlogits.dtype == np.float32


@pytest.mark.parametrize("op", OP_CASES)
def test_non_contiguous_inputs_give_the_same_result(op):
    shapes = OP_CASES[op][2]
    views = [strided(shape, seed=i, dtype=np.float64) for i, shape in enumerate(shapes)]
    y_view, grads_view = run_op(op, views)
    y, grads = run_op(op, [np.ascontiguousarray(v) for v in views])
    np.testing.assert_array_equal(y_view, y)
    for g_view, g in zip(grads_view, grads):
        np.testing.assert_array_equal(g_view, g)
