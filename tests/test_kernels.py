"""Kernel-specific tests of the Numba implementation (``fastcnn/kernels``).

Agreement with the reference is tested for every registered implementation in
tests/test_ops_agreement.py; here are the properties particular to kernels:
parallel kernels equal the serial result bit for bit (on 1 and 2 threads, and
against the same source compiled without ``parallel``), float32 stays float32,
``-inf`` padding and NaN survive the fast-math flags, the thread-count entry
point sets Numba and BLAS, and warm-up compiles every signature the presets use.
"""

import functools
import subprocess
import sys

import numba
import numpy as np
import pytest

from fastcnn import parallel, registry
from fastcnn.kernels import (_blas, _blockgemm, _im2col, _shifted, activations, conv, conv_im2col, conv_pool, dense,
                             loss, merge, optim, pooling, warmup, winograd, winograd4)
from fastcnn.kernels._jit import FASTMATH, PARALLEL_MIN_SIZE, twins
from fastcnn.testing import assert_close

DTYPES = [np.float32, np.float64]
VALID = ((0, 0), (0, 0))
TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2
needs_two_threads = pytest.mark.skipif(not TWO_THREADS, reason="needs NUMBA_NUM_THREADS >= 2")


@pytest.fixture
def restore_threads():
    before = parallel.get_num_threads()
    yield
    parallel.set_num_threads(before)


def with_threads(n, fn, *args, **kwargs):
    numba.set_num_threads(n)
    return fn(*args, **kwargs)


# Overlapping windows (stride < pool) make several outputs scatter into one
# input element: the case where a race or reordering would show.
SCATTER_GEOMETRY = [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 2), (2, 1), ((2, 0), (0, 1))),
    ((2, 2), (2, 2), VALID),
]


@needs_two_threads
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_size, stride, padding", SCATTER_GEOMETRY)
def test_parallel_pool_backward_equals_serial(restore_threads, dtype, pool_size, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(5, 9, 8, 3)).astype(dtype)  # ties
    geometry = dict(pool_size=pool_size, stride=stride, padding=padding)
    for forward, backward in (
        (pooling.max_pool2d_forward, pooling.max_pool2d_backward),
        (pooling.avg_pool2d_forward, pooling.avg_pool2d_backward),
    ):
        y1, cache1 = with_threads(1, forward, x, **geometry)
        y2, cache2 = with_threads(2, forward, x, **geometry)
        assert np.array_equal(y1, y2)
        dy = rng.standard_normal(y1.shape).astype(dtype)
        dx1 = with_threads(1, backward, dy, cache1)
        dx2 = with_threads(2, backward, dy, cache2)
        assert dx1.dtype == dtype
        assert np.array_equal(dx1, dx2)


def cut_gemms(monkeypatch, rows=3):
    """Every cut GEMM of conv and conv_pool in calls of ``rows`` rows (at the test shapes a
    block is one call otherwise: see ``_blockgemm.forward_gemm_rows``)."""
    calls = []

    def small_gemm_rows(K, F, dtype, least):
        calls.append((K, F))
        return rows

    monkeypatch.setattr(_blas, "small_gemm_rows", small_gemm_rows)
    return calls


@needs_two_threads
@pytest.mark.parametrize("cut", [False, True], ids=["one GEMM a block", "GEMMs cut into calls"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, padding", [((1, 1), ((1, 1), (1, 1))), ((2, 1), ((0, 1), (2, 0)))])
def test_parallel_conv_equals_serial(restore_threads, monkeypatch, dtype, stride, padding, cut):
    """Output, dx (the col2im scatter) and the per-group dw/db partial sums: bit for bit at 1 and 2 threads."""
    if cut:
        cut_gemms(monkeypatch)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7, 6, 3)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    pairs = [(conv.conv2d_forward, conv.conv2d_backward), (conv.conv2d_relu_forward, conv.conv2d_relu_backward),
             (conv_im2col.conv2d_forward, conv_im2col.conv2d_backward)]
    for forward, backward in pairs:
        y1, cache1 = with_threads(1, forward, x, w, b, stride=stride, padding=padding)
        y2, cache2 = with_threads(2, forward, x, w, b, stride=stride, padding=padding)
        assert y1.dtype == dtype
        assert np.array_equal(y1, y2)
        dy = rng.standard_normal(y1.shape).astype(dtype)
        g1 = with_threads(1, backward, dy, cache1)
        g2 = with_threads(2, backward, dy, cache2)
        for a, c in zip(g1, g2):
            assert a.dtype == dtype
            assert np.array_equal(a, c)


#: Every kernel of conv and pooling compiled with ``parallel=True`` (a ``prange`` over the batch,
#: or over conv's fixed work groups).
PARALLEL_KERNELS = [
    (conv, "_forward_kernel"), (conv, "_backward_kernel"),
    (conv_im2col, "_im2col_kernel"), (conv_im2col, "_col2im_kernel"),
    (dense, "_forward_kernel"), (dense, "_backward_kernel"),
    (conv_pool, "_forward_kernel"), (conv_pool, "_direct_forward_kernel"), (conv_pool, "_shifted_forward_kernel"),
    (conv_pool, "_backward_kernel"), (conv_pool, "_planar_backward_kernel"),
    (winograd, "_forward_kernel"), (winograd, "_pool_forward_kernel"),
    (winograd4, "_forward_kernel"), (winograd4, "_pool_forward_kernel"),
    (pooling, "_max_pool_forward_kernel"), (pooling, "_max_pool_backward_kernel"),
    (pooling, "_avg_pool_forward_kernel"), (pooling, "_avg_pool_backward_kernel"),
]


@functools.cache
def serial_twin(module, name):
    """Kernel ``name`` compiled without ``parallel`` (``prange`` is ``range``), cached on disk like the kernels."""
    return twins(getattr(module, name).py_func)[1]


def batch_parallel_outputs(dtype):
    """Every array the batch-parallel conv and pooling kernels write: 7 samples (an uneven split
    over 2 threads), overlapping 3x3 windows with padding (several outputs scatter into one input)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 9, 8, 3)).astype(dtype)  # (N, H, W, C)
    w = rng.standard_normal((3, 3, 3, 4)).astype(dtype)  # (KH, KW, C, F)
    b = rng.standard_normal(4).astype(dtype)  # (F,)
    same = ((1, 1), (1, 1))
    out = {}
    x5 = rng.standard_normal((7, 9, 8, 6)).astype(dtype)  # KW*C = 18: row-major im2col blocks
    w5 = rng.standard_normal((3, 3, 6, 4)).astype(dtype)
    y, cache = conv_im2col.conv2d_forward(x, w, b, stride=(1, 1), padding=same)
    out["im2col cols"] = cache[0]
    out["im2col dx"] = conv_im2col.conv2d_backward(rng.standard_normal(y.shape).astype(dtype), cache)[0]
    for name in ("conv2d", "conv2d_relu"):
        for xi, wi in ((x5, w5), (x, w)):  # row-major and transposed (KW*C = 9) im2col blocks
            y, cache = getattr(conv, name + "_forward")(xi, wi, b, stride=(1, 1), padding=same)
            grads = getattr(conv, name + "_backward")(rng.standard_normal(y.shape).astype(dtype), cache)
            for key, array in zip(("y", "dx", "dw", "db"), (y,) + grads):
                out[f"{name} C={xi.shape[-1]} {key}"] = array
    x16 = rng.standard_normal((7, 9, 8, 16)).astype(dtype)  # C = 16: the shifted-GEMM forward
    w16 = rng.standard_normal((3, 3, 16, 4)).astype(dtype)
    for name in ("conv2d_maxpool2d", "conv2d_relu_maxpool2d"):
        for xi, wi in ((x5, w5), (x, w), (x16, w16)):  # row-major and transposed im2col blocks, shifted GEMMs
            y, cache = getattr(conv_pool, name + "_forward")(xi, wi, b, stride=(1, 1), padding=same, pool_size=(2, 3))
            grads = getattr(conv_pool, name + "_backward")(rng.standard_normal(y.shape).astype(dtype), cache)
            for key, array in zip(("y", "argmax", "dx", "dw", "db"), (y, cache[2]) + grads):
                out[f"{name} C={xi.shape[-1]} {key}"] = array
            if xi is not x16:  # a first layer's weight gradient alone: the planar passes, groups of images
                _, dw, db = conv_pool.planar_backward(rng.standard_normal(y.shape).astype(dtype), cache)
                out[f"{name} C={xi.shape[-1]} planar dw"], out[f"{name} C={xi.shape[-1]} planar db"] = dw, db
        for pool in ((2, 3), (2, 2)):  # inference: the direct loops' pooled values, no window indices
            out[f"{name} direct inference {pool}"] = conv_pool.VARIANTS[name, "numba:direct"](
                x, w, b, stride=(1, 1), padding=same, pool_size=pool, need_cache=False)[0]
    for op, (forward, backward) in [*winograd.VARIANTS.items(), *winograd4.VARIANTS.items()]:  # tiles; pooled: images
        kw = dict(pool_size=(2, 3)) if "pool" in op else {}
        y, cache = forward(x5, w5, b, stride=(1, 1), padding=same, **kw)
        grads = backward(rng.standard_normal(y.shape).astype(dtype), cache)
        for key, array in zip(("y", "dx", "dw", "db"), (y,) + grads):
            out[f"winograd {forward.__module__} {op} {key}"] = array
        if "pool" in op:  # inference: F(4x4, 3x3) runs only without a cache
            out[f"winograd {forward.__module__} {op} inference y"] = forward(x5, w5, b, stride=(1, 1), padding=same,
                                                                              need_cache=False, **kw)[0]
    for N, F in ((7, 130), (400, 5)):  # forward split by columns (the weights larger), by rows (the input)
        xd = rng.standard_normal((N, 300)).astype(dtype)  # (N, IN)
        wd = rng.standard_normal((300, F)).astype(dtype)  # (IN, F)
        y, cache = dense.dense_forward(xd, wd, b[:1].repeat(F))
        grads = dense.dense_backward(rng.standard_normal(y.shape).astype(dtype), cache)
        for key, array in zip(("y", "dx", "dw", "db"), (y,) + grads):
            out[f"dense {N}x{F} {key}"] = array
    pool = dict(pool_size=(3, 3), stride=(1, 1), padding=same)
    for name in ("max_pool2d", "avg_pool2d"):
        y, cache = getattr(pooling, name + "_forward")(x, **pool)
        out[name + " y"] = y
        if name == "max_pool2d":
            out[name + " argmax"] = cache[0]
        out[name + " dx"] = getattr(pooling, name + "_backward")(rng.standard_normal(y.shape).astype(dtype), cache)
    return out


def test_parallel_kernel_list_is_complete():
    found = {
        (module, name)
        for module in (activations, conv, conv_im2col, conv_pool, dense, pooling, loss, optim, winograd, winograd4)
        for name, value in vars(module).items()
        if isinstance(value, numba.core.registry.CPUDispatcher) and value.targetoptions.get("parallel")
    }
    assert found == set(PARALLEL_KERNELS)


@needs_two_threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_kernels_equal_their_serial_compilation_bit_for_bit(restore_threads, monkeypatch, dtype):
    """The ``parallel=True`` build on 2 threads against the same source compiled serially."""
    numba.set_num_threads(2)
    in_parallel = batch_parallel_outputs(dtype)
    for module, name in PARALLEL_KERNELS:
        assert getattr(module, name).targetoptions.get("parallel")
        monkeypatch.setattr(module, name, serial_twin(module, name))
        assert not getattr(module, name).targetoptions.get("parallel")
    serial = batch_parallel_outputs(dtype)
    assert in_parallel.keys() == serial.keys()
    for key, array in in_parallel.items():
        assert array.dtype == serial[key].dtype and np.array_equal(array, serial[key]), key


def naive_max_pool(x, pool_size, stride, padding):
    """Loops over a -inf padded copy: y, and dx for dy = 1 routed to each window's np.argmax."""
    (PH, PW), (SH, SW), ((PT, PB), (PL, PR)) = pool_size, stride, padding
    xp = np.pad(x, ((0, 0), (PT, PB), (PL, PR), (0, 0)), constant_values=-np.inf)
    N, HP, WP, C = xp.shape
    OH, OW = (HP - PH) // SH + 1, (WP - PW) // SW + 1
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    for n, oh, ow, c in np.ndindex(N, OH, OW, C):
        window = xp[n, oh * SH:oh * SH + PH, ow * SW:ow * SW + PW, c].reshape(-1)
        k = int(np.argmax(window))
        y[n, oh, ow, c] = window[k]
        dxp[n, oh * SH + k // PW, ow * SW + k % PW, c] += 1
    return y, dxp[:, PT:PT + x.shape[1], PL:PL + x.shape[2]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_size, stride, padding", SCATTER_GEOMETRY)
def test_max_pool_ties_and_padding_match_argmax_exactly(dtype, pool_size, stride, padding):
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 0, size=(2, 7, 6, 2)).astype(dtype)  # all negative, many ties
    y, cache = pooling.max_pool2d_forward(x, pool_size=pool_size, stride=stride, padding=padding)
    dx = pooling.max_pool2d_backward(np.ones(y.shape, dtype=dtype), cache)
    y_ref, dx_ref = naive_max_pool(x, pool_size, stride, padding)
    assert y.dtype == dtype and dx.dtype == dtype
    assert np.array_equal(y, y_ref)  # padding never wins: no 0 leaks in
    assert np.array_equal(dx, dx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_all_minus_inf_window_stays_minus_inf(dtype):
    x = np.full((1, 3, 3, 1), -np.inf, dtype=dtype)
    padding = ((1, 1), (1, 1))
    y, cache = pooling.max_pool2d_forward(x, pool_size=(3, 3), stride=(1, 1), padding=padding)
    assert np.all(y == -np.inf)
    dx = pooling.max_pool2d_backward(np.ones(y.shape, dtype=dtype), cache)
    _, dx_ref = naive_max_pool(x, (3, 3), (1, 1), padding)
    assert np.array_equal(dx, dx_ref)  # argmax 0 is a padded cell for most windows: dropped


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_is_the_maximum(dtype):
    x = np.arange(2 * 4 * 4 * 1, dtype=dtype).reshape(2, 4, 4, 1)
    x[0, 1, 0, 0] = np.nan  # second row of the first window
    x[0, 2, 2, 0] = np.nan  # the first element of a window: larger numbers after it never replace it
    x[1, 3, 3, 0] = np.nan  # the last element: it still beats the larger numbers before it
    y, cache = pooling.max_pool2d_forward(x, pool_size=(2, 2), stride=(2, 2), padding=VALID)
    y_ref, dx_ref = naive_max_pool(x, (2, 2), (2, 2), VALID)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 0]) and np.isnan(y[1, 1, 1, 0])
    assert np.array_equal(y, y_ref, equal_nan=True)
    dx = pooling.max_pool2d_backward(np.ones(y.shape, dtype=dtype), cache)
    assert np.array_equal(dx, dx_ref)


@pytest.mark.parametrize("module", [winograd, winograd4], ids=["F(2x2)", "F(4x4)"])
def test_winograd_filter_transform_is_g_g_gt_of_every_slice(module):
    """U[a * r + s, c, f] = (G w[:, :, c, f] G^T)[r, s], in float64 and rounded once to float32, also
    for the flipped, transposed weights the input gradient passes (a non-contiguous view)."""
    G = module.G_MATRIX
    a = G.shape[0]
    w = np.random.default_rng(3).standard_normal((3, 3, 5, 4))
    for weights in (w, w[::-1, ::-1].transpose(0, 1, 3, 2)):
        C, F = weights.shape[2:]
        expected = np.empty((a * a, C, F))
        for c in range(C):
            for f in range(F):
                expected[:, c, f] = (G @ weights[:, :, c, f] @ G.T).reshape(a * a)
        U = module.filter_transform(weights, np.float64)
        assert U.shape == (a * a, C, F) and U.dtype == np.float64 and U.flags.c_contiguous
        np.testing.assert_allclose(U, expected, rtol=1e-14, atol=1e-15)
        w32 = weights.astype(np.float32)
        U32 = module.filter_transform(w32, np.float32)
        assert U32.dtype == np.float32 and U32.flags.c_contiguous
        exact = module.filter_transform(w32.astype(np.float64), np.float64)
        # Rounded once from float64: within half a float32 ulp (2**-24 relative), plus float64's own error.
        assert np.all(np.abs(U32 - exact) <= 2.0 ** -24 * np.abs(exact) * (1 + 1e-9) + 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool", [(2, 2), (2, 3)])
@pytest.mark.parametrize("need_cache", [True, False], ids=["training", "inference"])
def test_direct_conv_pool_nan_is_the_maximum(dtype, pool, need_cache):
    """The direct loops' pooled values (the unrolled 2x2 windows of inference too) take a NaN
    wherever the window holds one, first, inside or last, as max_pool2d does."""
    x = np.arange(2 * 6 * 6 * 1, dtype=dtype).reshape(2, 6, 6, 1)
    x[0, 1, 0, 0] = x[0, 2, 2, 0] = x[1, 3, 3, 0] = x[1, 5, 5, 0] = np.nan
    w = np.ones((1, 1, 1, 1), dtype=dtype)  # the identity: the convolution is x
    for name in ("conv2d_maxpool2d", "conv2d_relu_maxpool2d"):
        y, _ = conv_pool.VARIANTS[name, "numba:direct"](x, w, None, stride=(1, 1), padding=VALID, pool_size=pool,
                                                         need_cache=need_cache)
        y_ref, _ = naive_max_pool(x, pool, pool, VALID)
        assert np.isnan(y_ref).sum() >= 3
        assert np.array_equal(y, y_ref, equal_nan=True), name


@pytest.mark.parametrize("window, expected", [(4, np.int8), (127, np.int8), (129, np.int16), (40000, np.int32)])
def test_max_pool_argmax_index_dtype_is_small(window, expected):
    assert pooling._index_dtype(window) == expected


def test_max_pool_large_window_uses_int16_argmax():
    x = np.random.default_rng(3).standard_normal((1, 12, 12, 2)).astype(np.float32)
    y, cache = pooling.max_pool2d_forward(x, pool_size=(12, 12), stride=(1, 1), padding=VALID)
    assert cache[0].dtype == np.int16
    _, dx_ref = naive_max_pool(x, (12, 12), (1, 1), VALID)
    assert np.array_equal(pooling.max_pool2d_backward(np.ones(y.shape, np.float32), cache), dx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_nan_propagates_like_numpy(dtype):
    x = np.array([[np.nan, -1.0, 0.0, 2.0, -np.inf, np.inf]], dtype=dtype)
    y, cache = activations.relu_forward(x)
    assert y.dtype == dtype
    assert np.array_equal(y, np.maximum(x, 0), equal_nan=True)
    dy = np.array([[1.0, np.nan, 1.0, 3.0, np.inf, 1.0]], dtype=dtype)
    dx = activations.relu_backward(dy, cache)
    expected = registry.get("relu", "numpy")
    with np.errstate(invalid="ignore"):  # inf * 0 in the NumPy path
        dx_numpy = expected.backward(dy, expected.forward(x)[1])
    assert np.array_equal(dx, dx_numpy, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_softmax_propagate_nan(dtype):
    logits = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], dtype=dtype)
    value, dlogits = loss.softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isnan(value)
    assert dlogits.dtype == dtype
    assert np.all(np.isnan(dlogits[0])) and np.all(np.isfinite(dlogits[1]))
    y, _ = activations.softmax_forward(logits)
    assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0]], dtype=dtype)
    value, dlogits = loss.softmax_cross_entropy(logits, np.array([1]))
    assert value == pytest.approx(2e4, rel=1e-6)
    assert np.array_equal(dlogits, np.array([[1.0, -1.0, 0.0]], dtype=dtype))


@pytest.mark.parametrize("name", ["relu", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_serial_and_parallel_twins_agree(name, dtype):
    kwargs = {"alpha": 0.1} if name == "leaky_relu" else {}
    forward = getattr(activations, name + "_forward")
    backward = getattr(activations, name + "_backward")
    x = np.random.default_rng(6).standard_normal(PARALLEL_MIN_SIZE + 5).astype(dtype)
    dy = np.random.default_rng(7).standard_normal(x.shape).astype(dtype)
    y_big, cache_big = forward(x, **kwargs)  # parallel twin
    dx_big = backward(dy, cache_big)
    head = slice(0, 1000)
    y_small, cache_small = forward(x[head], **kwargs)  # serial twin
    dx_small = backward(dy[head], cache_small)
    assert y_big.dtype == dtype and dx_big.dtype == dtype
    np.testing.assert_array_equal(y_small, y_big[head])  # bit for bit: each element is computed alone
    np.testing.assert_array_equal(dx_small, dx_big[head])


@pytest.mark.parametrize("n_inputs", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_kernels_equal_numpy_add_then_relu_on_both_twins(dtype, n_inputs):
    """add and add_relu, serial (small) and parallel (from PARALLEL_MIN_SIZE) builds, give exactly
    NumPy's ``x0 + x1 + ...`` (summed left to right) and relu of it, NaN and exact zeros included;
    add_relu's gradient is one array, ``dy`` where the sum is positive, for every input."""
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((PARALLEL_MIN_SIZE // 4 + 3, 4)).astype(dtype) for _ in range(n_inputs)]
    xs[0][0, 0], xs[1][1, 1] = np.nan, -xs[0][1, 1]  # NaN passes; a sum of exactly 0 has gradient 0
    if n_inputs == 3:
        xs[2][1, 1] = 0
    dy = rng.standard_normal(xs[0].shape).astype(dtype)
    for rows in (slice(0, 7), slice(None)):  # the serial twin, the parallel one
        part = [x[rows] for x in xs]
        total = part[0] + part[1]
        for x in part[2:]:
            total = total + x
        y, cache = merge.add_forward(*part)
        assert y.dtype == dtype and cache == n_inputs
        np.testing.assert_array_equal(y, total)
        y, cache = merge.add_relu_forward(*part)
        relu, relu_cache = activations.relu_forward(total)
        np.testing.assert_array_equal(y, relu)
        assert np.isnan(y[0, 0]) and y[1, 1] == 0
        grads = merge.add_relu_backward(dy[rows], cache)
        assert len(grads) == n_inputs and all(g is grads[0] for g in grads)
        np.testing.assert_array_equal(grads[0], activations.relu_backward(dy[rows], relu_cache))
        assert grads[0][1, 1] == 0


def test_add_kernels_hand_mixed_dtypes_to_numpy():
    """Inputs of two dtypes are added as NumPy adds them (promoted), not by the kernel."""
    a, b = np.ones((2, 3), np.float32), np.full((2, 3), -2.0)
    y, _ = merge.add_forward(a, b)
    assert y.dtype == np.float64 and np.array_equal(y, a + b)
    y, cache = merge.add_relu_forward(a, b)
    assert y.dtype == np.float64 and np.array_equal(y, np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, channels", [("conv2d", 6), ("conv2d_relu", 3), ("conv2d_relu", 6),
                                          ("conv2d_relu_maxpool2d", 3), ("conv2d_maxpool2d", 6)])
def test_gemms_cut_into_small_calls_match_the_reference(monkeypatch, dtype, op, channels):
    """Forward and weight-gradient GEMMs cut into calls of 3 rows (with a remainder), row-major
    and transposed (``KW*C = 9``) im2col blocks: forward and every gradient match the reference."""
    calls = cut_gemms(monkeypatch)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 8, 7, channels)).astype(dtype)  # 280 output pixels, blocks of 140
    w = rng.standard_normal((3, 3, channels, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    kwargs = dict(stride=(1, 1), padding=((1, 1), (1, 1)))
    if "pool" in op:
        kwargs["pool_size"] = (2, 2)
    fast, ref = registry.get(op, "numba"), registry.get(op, "reference")
    y, cache = fast.forward(x, w, b, **kwargs)
    y_ref, cache_ref = ref.forward(x, w, b, **kwargs)
    assert_close(y, y_ref, dtype=dtype, name="y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    for name, got, want in zip(("dx", "dw", "db"), fast.backward(dy, cache), ref.backward(dy, cache_ref)):
        assert_close(got, want, dtype=dtype, name=name)
    assert calls, "conv never asked how to cut its GEMMs"


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_weight_gradient_cut_into_small_calls_matches_the_reference(monkeypatch, dtype):
    """``dw = x.T @ dy`` in calls of 7 rows (300 input features over 2 groups: remainders)."""
    monkeypatch.setattr(_blas, "small_gemm_rows", lambda K, N, dtype, least: 7)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((9, 300)).astype(dtype)
    w = rng.standard_normal((300, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    ref, split = registry.get("dense", "reference"), registry.get("dense", "numba:split")
    y, cache = split.forward(x, w, b)
    y_ref, cache_ref = ref.forward(x, w, b)
    assert_close(y, y_ref, dtype=dtype, name="y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    for name, got, want in zip(("dx", "dw", "db"), split.backward(dy, cache), ref.backward(dy, cache_ref)):
        assert_close(got, want, dtype=dtype, name=name)


# (N, H, W, C, F, kernel, padding, pool): stride 1, the shifted-GEMM forward's domain.
SHIFTED_GRID = [
    (2, 9, 7, 16, 5, (3, 3), ((1, 1), (1, 1)), (2, 2)),
    (3, 8, 8, 3, 4, (3, 3), ((0, 0), (0, 0)), (2, 3)),  # columns and rows no window covers
    (2, 7, 9, 2, 3, (2, 3), ((2, 0), (1, 2)), (3, 2)),  # rectangular kernel, uneven padding
    (1, 6, 5, 4, 2, (1, 1), ((0, 0), (0, 0)), (2, 2)),
    (2, 9, 9, 3, 2, (5, 5), ((2, 2), (2, 2)), (2, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("case", SHIFTED_GRID)
@pytest.mark.parametrize("op", ["conv2d_maxpool2d", "conv2d_relu_maxpool2d"])
def test_shifted_gemm_forward_matches_the_reference(op, case, kind, dtype):
    """The fused conv + pool forward as shifted GEMMs (the variant, at any channel count)
    against the reference layers, then its backward from that forward's cache."""
    N, H, W, C, F, kernel, padding, pool = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal(kernel + (C, F))
    b = rng.standard_normal(F)
    if kind == "ties":  # integer inputs and weights: many equal outputs, the first maximum must win
        x, w, b = np.round(x), np.round(w), np.round(b)
    x, w, b = (a.astype(dtype) for a in (x, w, b))
    kwargs = dict(stride=(1, 1), padding=padding, pool_size=pool)
    fast, ref = registry.get(op, "numba:shifted"), registry.get(op, "reference")
    y, cache = fast.forward(x, w, b, **kwargs)
    y_ref, cache_ref = ref.forward(x, w, b, **kwargs)
    assert_close(y, y_ref, dtype=dtype, name="y")
    if kind == "ties":
        np.testing.assert_array_equal(y, y_ref)  # integers: exact, so the window index must be too
    dy = rng.standard_normal(y.shape).astype(dtype)
    for name, got, want in zip(("dx", "dw", "db"), fast.backward(dy, cache), ref.backward(dy, cache_ref)):
        assert_close(got, want, dtype=dtype, name=name)


def test_shifted_gemm_forward_is_the_heuristic_from_16_channels(monkeypatch):
    """A 32-channel conv + pool takes the shifted path under the heuristic plan (the kernel runs)."""
    monkeypatch.setenv("FASTCNN_PLAN", "heuristic")
    calls = []
    kernel = conv_pool._shifted_forward_kernel
    monkeypatch.setattr(conv_pool, "_shifted_forward_kernel", lambda *a: calls.append(1) or kernel(*a))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 10, 10, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 8)).astype(np.float32)
    kwargs = dict(stride=(1, 1), padding=((1, 1), (1, 1)), pool_size=(2, 2))
    y, _ = registry.get("conv2d_relu_maxpool2d", "numba").forward(x, w, None, **kwargs)
    y_ref, _ = registry.get("conv2d_relu_maxpool2d", "reference").forward(x, w, None, **kwargs)
    assert calls == [1]
    assert_close(y, y_ref, dtype=np.float32, name="y")


def test_gemm_rows_cuts_float32_gemms_to_the_small_kernel_size(monkeypatch):
    monkeypatch.setattr(_blas, "SMALL_GEMM_MNK", 100**3)
    assert _blas.small_gemm_rows(288, 32, np.float32, 32) == 108  # vgg_mini conv2: 108 * 288 * 32 <= 100**3
    assert _blas.small_gemm_rows(576, 64, np.float32, 16) == 27
    assert _blas.small_gemm_rows(576, 64, np.float32, 32) >= 2**62  # fewer than `least` rows: one call a block
    assert _blas.small_gemm_rows(288, 32, np.float64, 16) >= 2**62  # the small kernels are SGEMM's
    assert _blockgemm.forward_gemm_rows(288, 32, np.float32) == 108
    assert _blockgemm.forward_gemm_rows(288, 64, np.float32) >= 2**62  # more filters than FORWARD_CUT_MAX_F
    assert _blockgemm.backward_gemm_rows(288, 64, np.float32) == (54, 54)
    monkeypatch.setattr(_blas, "SMALL_GEMM_MNK", 0)
    assert _blas.small_gemm_rows(288, 32, np.float32, 16) >= 2**62


@pytest.mark.parametrize("info", [
    {"internal_api": "openblas", "architecture": "SkylakeX"},
    {"internal_api": "openblas", "architecture": "Haswell"},
    {"internal_api": "mkl"},
    {},
])
def test_small_gemm_rule_is_the_same_on_every_machine(monkeypatch, info):
    # The fixed (heuristic) rule names no CPU: whether cutting pays is measured by the planner.
    monkeypatch.delenv("FASTCNN_SMALL_GEMM_MNK", raising=False)
    monkeypatch.setattr(_blas, "_numpy_blas_info", lambda: info)
    assert _blas._small_gemm_mnk() == 0
    monkeypatch.setenv("FASTCNN_SMALL_GEMM_MNK", "0")
    assert _blas._small_gemm_mnk() == 0
    monkeypatch.setenv("FASTCNN_SMALL_GEMM_MNK", "500000")
    assert _blas._small_gemm_mnk() == 500000


@pytest.mark.parametrize("bad", ["lots", "-1", "1e6"])
def test_small_gemm_size_override_must_be_a_count(monkeypatch, bad):
    monkeypatch.setenv("FASTCNN_SMALL_GEMM_MNK", bad)
    with pytest.raises(ValueError, match=f"FASTCNN_SMALL_GEMM_MNK must be a non-negative integer.*{bad}"):
        _blas._small_gemm_mnk()


def test_every_numba_op_keeps_float32(restore_threads):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    args = {
        "conv2d": ((x, rng.standard_normal((3, 3, 3, 2)).astype(np.float32), np.zeros(2, np.float32)),
                   dict(stride=(1, 1), padding=VALID)),
        "conv2d_relu": ((x, rng.standard_normal((3, 3, 3, 2)).astype(np.float32), np.zeros(2, np.float32)),
                        dict(stride=(1, 1), padding=VALID)),
        "conv2d_maxpool2d": ((x, rng.standard_normal((3, 3, 3, 2)).astype(np.float32), np.zeros(2, np.float32)),
                             dict(stride=(1, 1), padding=VALID, pool_size=(2, 2))),
        "conv2d_relu_maxpool2d": ((x, rng.standard_normal((3, 3, 3, 2)).astype(np.float32),
                                   np.zeros(2, np.float32)), dict(stride=(1, 1), padding=VALID, pool_size=(2, 2))),
        "dense": ((x.reshape(2, -1), rng.standard_normal((108, 600)).astype(np.float32),
                   np.zeros(600, np.float32)), {}),  # big enough to split over threads
        "max_pool2d": ((x,), dict(pool_size=(2, 2), stride=(2, 2), padding=VALID)),
        "avg_pool2d": ((x,), dict(pool_size=(2, 2), stride=(2, 2), padding=VALID)),
        "leaky_relu": ((x,), dict(alpha=0.2)),
        "dropout": ((x,), dict(rate=0.5, rng=np.random.default_rng(0))),
        "batch_norm": ((x, np.ones(3, np.float32), np.zeros(3, np.float32)), dict(epsilon=1e-3)),
        "flip2d": ((x,), dict(flip=np.array([[True, False], [True, True]]))),
        "translate2d": ((x,), dict(shift=np.array([[1, -2], [0, 3]]), fill_mode="reflect", fill_value=0.5)),
        "crop2d": ((x,), dict(offset=np.array([[0, 1], [2, 2]]), size=(4, 4))),
        "rotate2d": ((x,), dict(angle=np.array([0.3, -2.0]), fill_mode="constant", fill_value=0.5)),
    }
    for op in registry.ops():
        if "numba" not in registry.implementations(op):
            continue
        entry = registry.get(op, "numba")
        if op.endswith("_update"):  # optimizer updates: in place, checked in tests/test_optim.py
            continue
        if op == "softmax_cross_entropy":
            _, grad = entry.forward(x[:, 0, 0, :], np.array([0, 2]))
            assert grad.dtype == np.float32
            continue
        a, kw = args.get(op, ((x,), {}))
        y, cache = entry.forward(*a, **kw)
        assert y.dtype == np.float32, op
        grads = entry.backward(np.ones(y.shape, np.float32), cache)
        for g in grads if isinstance(grads, tuple) else (grads,):
            assert g is None or g.dtype == np.float32, op


#: Kernel modules that sum in float64 on purpose (see their docstrings): not checked for promotion.
PROMOTING = {"loss", "batchnorm"}
#: Single kernels of the other modules that compute in float64 on purpose: the Winograd filter
#: transform (its G holds 1/6 and 1/24; it is computed in float64 and rounded once).
PROMOTING_KERNELS = {"fastcnn.kernels.winograd._transform_kernel"}


def _kernel_modules():
    """Every module of fastcnn.kernels but :data:`PROMOTING` (a module added later is checked too)."""
    import importlib
    import pkgutil

    import fastcnn.kernels

    names = sorted(info.name for info in pkgutil.iter_modules(fastcnn.kernels.__path__))
    return [importlib.import_module(f"fastcnn.kernels.{name}") for name in names if name not in PROMOTING]


def test_the_float32_check_sees_every_kernel_module():
    checked = {module.__name__.rsplit(".", 1)[1] for module in _kernel_modules()}
    assert {"activations", "conv", "conv_pool", "dense", "microkernel", "optim", "pooling", "winograd", "winograd4",
            "_blockgemm", "_shifted"} <= checked
    assert not checked & PROMOTING


def _kernel_dispatchers():
    found = {}
    for module in _kernel_modules():
        for name, value in vars(module).items():
            candidates = tuple(value.values()) if isinstance(value, dict) else value if isinstance(value, tuple) else (
                value,)
            for item in candidates:
                if isinstance(item, numba.core.registry.CPUDispatcher):  # conv and dense share names
                    found[f"{item.py_func.__module__}.{item.py_func.__qualname__}"] = item  # once, where defined
    return found


def test_float32_kernels_never_promote_to_float64():
    """No ``fpext float -> double`` in a float32 kernel: constants are cast to the array dtype.

    Cached machine code cannot be inspected, so each float32 signature is
    recompiled serially (``prange`` is ``range``) with the same fast-math flags.
    The loss and batch_norm kernels are left out on purpose (:data:`PROMOTING`): they sum in
    float64; so is the Winograd filter transform (:data:`PROMOTING_KERNELS`). The two builds of
    a :func:`twins` pair share their code: recompiled serially they are the same function, checked once.
    """
    warmup((np.float32,))
    checked = 0
    seen = set()
    dispatchers = _kernel_dispatchers()
    assert PROMOTING_KERNELS <= dispatchers.keys()
    for name, dispatcher in dispatchers.items():
        if name in PROMOTING_KERNELS:
            continue
        for sig in dispatcher.signatures:
            if not any(getattr(t, "dtype", None) == numba.float32 for t in sig):
                continue
            if (dispatcher.py_func.__code__, sig) in seen:
                continue
            seen.add((dispatcher.py_func.__code__, sig))
            fresh = numba.njit(sig, fastmath=set(FASTMATH))(dispatcher.py_func)
            ir = "\n".join(fresh.inspect_llvm().values())
            assert "fpext float" not in ir, f"{name}{sig} promotes float32 to float64"
            checked += 1
    assert checked >= 10


def test_set_num_threads_sets_numba_and_blas(restore_threads):
    assert parallel.blas_num_threads(), "threadpoolctl (a dependency) finds no BLAS: nothing is checked"
    parallel.set_num_threads(1)
    assert parallel.get_num_threads() == 1
    assert numba.get_num_threads() == 1
    assert set(parallel.blas_num_threads().values()) == {1}
    top = parallel.max_num_threads()
    parallel.set_num_threads(top)
    assert parallel.get_num_threads() == numba.get_num_threads() == top
    assert set(parallel.blas_num_threads().values()) == {top}


@pytest.mark.parametrize("bad", [0, -1, parallel.max_num_threads() + 1])
def test_set_num_threads_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"`n` must be between 1 and {parallel.max_num_threads()} .*received {bad}$"):
        parallel.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", True, None])
def test_set_num_threads_rejects_non_int(bad):
    with pytest.raises(TypeError, match=r"set_num_threads: `n` must be an int, received"):
        parallel.set_num_threads(bad)


def test_warmup_runs_and_validates_dtypes():
    warmup()  # float32
    warmup(dtypes=(np.float64,))
    with pytest.raises(ValueError, match=r"warmup: dtypes must be float32 or float64, received int64"):
        warmup(dtypes=(np.int64,))


#: Run in a fresh process: after warmup(), train, predict and evaluate every preset and
#: print the kernel signatures that were compiled (or loaded) after warmup returned.
_WARMUP_COVERAGE = """
import numba, numpy as np, fastcnn
from fastcnn.kernels import (_blockgemm, _im2col, _planar, _shifted, activations, conv, conv_pool, dense, loss, merge,
                             microkernel, optim, pooling, winograd, winograd4)

def signatures():
    return {(m.__name__, d.py_func.__qualname__, sig)
            for m in (activations, conv, conv_pool, dense, _blockgemm, _im2col, _planar, _shifted, loss, merge,
                      microkernel, optim, pooling, winograd, winograd4)
            for value in vars(m).values()
            for d in (tuple(value.values()) if isinstance(value, dict) else value if isinstance(value, tuple)
                      else (value,))
            if isinstance(d, numba.core.registry.CPUDispatcher) for sig in d.signatures}

fastcnn.warmup()
warm = signatures()
rng = np.random.default_rng(0)
x, y = rng.random((8, 28, 28, 1), dtype=np.float32), np.arange(8) % 10
for preset in fastcnn.models.PRESETS.values():
    model = preset(seed=0)
    model.train_on_batch(x, y)
    model.predict(x)
    model.evaluate(x, y)
print(len(warm), sorted(map(str, signatures() - warm)))
"""


def test_warmup_covers_every_signature_the_presets_use():
    """A first training step after warmup() compiles nothing: the start-up promise of issue 4."""
    result = subprocess.run([sys.executable, "-c", _WARMUP_COVERAGE], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    count, missed = result.stdout.split(" ", 1)
    assert int(count) >= 23  # one float32 signature per kernel (and per twin)
    assert missed.strip() == "[]"
