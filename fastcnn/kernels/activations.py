"""Element-wise activations and row-wise softmax as single-pass Numba kernels.

NumPy evaluates ``dy * y * (1 - y)`` or ``np.where(x >= 0, ...)`` as several
full passes with a temporary each; a kernel does one pass. Element-wise
kernels run on the flattened array (one compiled signature per dtype, any
shape): in parallel over disjoint chunks from ``PARALLEL_MIN_SIZE`` elements
up, serially below (see :func:`fastcnn.kernels._jit.twins`). Softmax rows are
short, so its kernels are serial. NaN propagates wherever it does in the NumPy
implementation: ``relu(nan)`` is NaN and its gradient is ``dy * 0``.

``tanh`` has no kernel: NumPy's SIMD ``np.tanh`` is 3-7x faster than Numba's.
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import kernel, ordered_kernel, pick, twins
from fastcnn.ops.activations import dropout_bits, dropout_span, dropout_threshold

__all__ = [
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "softmax_forward", "softmax_backward",
    "dropout_forward", "dropout_backward",
]


def _relu_forward(y, x):
    # y: (size,) out; x: (size,)
    zero = y.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = zero if v <= zero else v  # NaN is not <= 0: it passes through


_relu_forward_pair = twins(_relu_forward)


def _relu_backward(dx, dy, y):
    # dx: (size,) out; dy, y: (size,); y > 0 exactly where x > 0
    zero = dx.dtype.type(0)
    one = dx.dtype.type(1)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * (one if y[i] > zero else zero)  # a multiply, so NaN/inf in dy propagate


_relu_backward_pair = twins(_relu_backward)


def _leaky_relu_forward(y, x, alpha):
    # y: (size,) out; x: (size,); alpha: x.dtype scalar
    zero = y.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > zero else alpha * v


_leaky_relu_forward_pair = twins(_leaky_relu_forward)


def _leaky_relu_backward(dx, dy, x, alpha):
    # dx: (size,) out; dy, x: (size,)
    zero = dx.dtype.type(0)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] if x[i] > zero else alpha * dy[i]


_leaky_relu_backward_pair = twins(_leaky_relu_backward)


def _sigmoid_forward(y, x):
    # y: (size,) out; x: (size,). exp(-|x|) never overflows.
    one = y.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        e = np.exp(-abs(v))
        y[i] = one / (one + e) if v >= 0 else e / (one + e)


_sigmoid_forward_pair = twins(_sigmoid_forward)


def _sigmoid_backward(dx, dy, y):
    # dx: (size,) out; dy, y: (size,)
    one = dx.dtype.type(1)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * y[i] * (one - y[i])


_sigmoid_backward_pair = twins(_sigmoid_backward)


@kernel
def _softmax_forward_kernel(y, x):
    # y: (R, K) out; x: (R, K). Serial: softmax rows are short (K classes).
    R, K = x.shape
    for r in range(R):
        m = x[r, 0]
        for k in range(1, K):
            v = x[r, k]
            if v > m or v != v:  # a NaN row maximum makes the whole row NaN, as np.max does
                m = v
        s = y.dtype.type(0)
        for k in range(K):
            e = np.exp(x[r, k] - m)
            y[r, k] = e
            s += e
        for k in range(K):
            y[r, k] /= s


@ordered_kernel
def _softmax_backward_kernel(dx, dy, y):
    # dx: (R, K) out; dy, y: (R, K)
    # Relative to the largest class (see fastcnn.ops.activations.softmax_backward):
    # y * ((dy - dy[top]) - sum(y * (dy - dy[top]))) keeps saturated rows accurate.
    R, K = y.shape
    for r in range(R):
        top = 0
        for k in range(1, K):
            if y[r, k] > y[r, top]:
                top = k
        d_top = dy[r, top]
        s = dx.dtype.type(0)
        for k in range(K):
            s += y[r, k] * (dy[r, k] - d_top)
        for k in range(K):
            dx[r, k] = y[r, k] * ((dy[r, k] - d_top) - s)


def _flat(a):
    """A contiguous 1-D view (or copy) of ``a``."""
    return np.ascontiguousarray(a).reshape(-1)


def _unary(pair, x, *args):
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, dtype=x.dtype)  # x.shape
    pick(pair, x.size)(y.reshape(-1), x.reshape(-1), *args)
    return y


def _backward(pair, dy, saved, *args):
    dx = np.empty(saved.shape, dtype=saved.dtype)  # saved.shape
    pick(pair, dx.size)(dx.reshape(-1), _flat(dy.astype(saved.dtype, copy=False)), saved.reshape(-1), *args)
    return dx


def relu_forward(x):
    """``max(x, 0)``; NaN propagates. Any shape. The cache is ``y`` (``y > 0`` iff ``x > 0``)."""
    y = _unary(_relu_forward_pair, x)
    return y, y


def relu_backward(dy, y):
    """``dy`` where ``x > 0``, else ``dy * 0`` (the gradient at exactly 0 is 0)."""
    return _backward(_relu_backward_pair, dy, y)


def leaky_relu_forward(x, *, alpha):
    """``x`` where ``x > 0``, else ``alpha * x``. Any shape."""
    x = np.ascontiguousarray(x)
    a = x.dtype.type(alpha)
    return _unary(_leaky_relu_forward_pair, x, a), (x, a)


def leaky_relu_backward(dy, cache):
    x, a = cache
    return _backward(_leaky_relu_backward_pair, dy, x, a)


def sigmoid_forward(x):
    """Logistic function from ``exp(-|x|)`` (never overflows). Any shape."""
    y = _unary(_sigmoid_forward_pair, x)
    return y, y


def sigmoid_backward(dy, y):
    return _backward(_sigmoid_backward_pair, dy, y)


def softmax_forward(x):
    """Softmax over the last axis, shifted by the row maximum. Shape: any ``(..., K)``."""
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, dtype=x.dtype)  # (..., K)
    K = x.shape[-1]
    _softmax_forward_kernel(y.reshape(-1, K), x.reshape(-1, K))
    return y, y


def softmax_backward(dy, y):
    """``y * (dy - sum(dy * y))`` per row."""
    dx = np.empty(y.shape, dtype=y.dtype)  # (..., K)
    K = y.shape[-1]
    dy = np.ascontiguousarray(dy, dtype=y.dtype)
    _softmax_backward_kernel(dx.reshape(-1, K), dy.reshape(-1, K), y.reshape(-1, K))
    return dx


def _dropout_forward(y, keep, x, bits, threshold, scale):
    # y: (size,) out; keep: (size,) uint8 out; x: (size,); bits: (size,) uint32 draws.
    zero = y.dtype.type(0)
    for i in prange(x.shape[0]):
        k = bits[i] >= threshold
        keep[i] = k
        y[i] = x[i] * (scale if k else zero)


_dropout_forward_pair = twins(_dropout_forward)


def _dropout_backward(dx, dy, keep, scale):
    # dx: (size,) out; dy: (size,); keep: (size,) uint8. A multiply: NaN/inf in dy propagate.
    zero = dx.dtype.type(0)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * (scale if keep[i] else zero)


_dropout_backward_pair = twins(_dropout_backward)


def dropout_forward(x, *, rate, rng, rows=None):
    """Inverted dropout with the contract's mask (see :func:`fastcnn.ops.activations.dropout_bits`):
    the draw is NumPy's, the threshold test, scaling and a ``uint8`` mask one kernel pass.
    ``rows``: see :func:`fastcnn.ops.activations.dropout_span`."""
    if rate == 0:
        return x, None
    x = np.ascontiguousarray(x)
    bits = dropout_bits(rng, x.size, *dropout_span(x.shape, rows))  # (size,) uint32
    scale = x.dtype.type(1.0 / (1.0 - rate))
    y = np.empty(x.shape, dtype=x.dtype)  # x.shape
    keep = np.empty(x.shape, dtype=np.uint8)  # x.shape
    pick(_dropout_forward_pair, x.size)(y.reshape(-1), keep.reshape(-1), x.reshape(-1), bits,
                                        dropout_threshold(rate), scale)
    return y, (keep, scale)


def dropout_backward(dy, cache):
    if cache is None:
        return dy
    keep, scale = cache
    dx = np.empty(keep.shape, dtype=scale.dtype)  # x.shape
    pick(_dropout_backward_pair, dx.size)(dx.reshape(-1), _flat(dy.astype(scale.dtype, copy=False)),
                                          keep.reshape(-1), scale)
    return dx
