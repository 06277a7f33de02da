"""``add`` and the fused ``add_relu`` (a residual block's ``ReLU(Add([y, shortcut]))``) as one-pass kernels.

NumPy's ``a + b`` runs on one thread, and a ReLU after it is a second pass over
the sum, each pass bound by memory. ``add_relu`` reads the inputs once and writes
``max(sum, 0)`` once, in parallel over disjoint chunks from ``PARALLEL_MIN_SIZE``
elements up (:func:`fastcnn.kernels._jit.pick`). Measured against the two passes:
README.md, "Performance".

Sums run in the order NumPy's ``add`` does (``((x0 + x1) + x2) + ...``), so
both ops give exactly the results of the NumPy implementation and of ``relu``
after ``add``. NaN passes the ReLU as in :mod:`fastcnn.kernels.activations`.
The gradient of ``add_relu`` is one array, ``dy`` where the output is positive
(``dy * 0`` elsewhere), handed to every input as ``add`` hands ``dy``.
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import pick, twins
from fastcnn.kernels.activations import relu_backward, relu_forward
from fastcnn.ops import merge as numpy_merge

__all__ = ["add_forward", "add_backward", "add_relu_forward", "add_relu_backward"]


def _add(y, a, b):
    # y: (size,) out (may be a); a, b: (size,)
    for i in prange(y.shape[0]):
        y[i] = a[i] + b[i]


_add_pair = twins(_add)


def _add_relu(y, a, b):
    # y: (size,) out (may be a); a, b: (size,): max(a + b, 0), NaN passes
    zero = y.dtype.type(0)
    for i in prange(y.shape[0]):
        v = a[i] + b[i]
        y[i] = zero if v <= zero else v


_add_relu_pair = twins(_add_relu)


def _kernel_inputs(xs):
    """The inputs as contiguous 1-D arrays when all share one float dtype and shape, else None
    (then NumPy's ``add``, with its dtype promotion and error, runs instead)."""
    first = xs[0]
    if first.dtype not in (np.float32, np.float64):
        return None
    if any(x.dtype != first.dtype or x.shape != first.shape for x in xs[1:]):
        return None
    return [np.ascontiguousarray(x).reshape(-1) for x in xs]


def _sum(flat, shape, dtype, last):
    """``y`` ``shape``: ``flat[0] + flat[1] + ...`` summed left to right, the last pair by ``last``."""
    y = np.empty(shape, dtype=dtype)
    out = y.reshape(-1)
    for k in range(1, len(flat)):
        pair = last if k == len(flat) - 1 else _add_pair
        pick(pair, out.size)(out, flat[0] if k == 1 else out, flat[k])
    return y


def add_forward(*xs):
    """Shape: every x ``(N, ...)`` of one shape -> y the same shape; cache: the number of inputs."""
    flat = _kernel_inputs(xs)
    if flat is None:
        return numpy_merge.add_forward(*xs)
    return _sum(flat, xs[0].shape, xs[0].dtype, _add_pair), len(xs)


def add_backward(dy, cache):
    """``(dy, dy, ...)``: one entry per input, all the same array."""
    return numpy_merge.add_backward(dy, cache)


def add_relu_forward(*xs):
    """``max(x0 + x1 + ..., 0)``. Shape: every x ``(N, ...)`` of one shape -> y the same shape;
    cache ``(y, number of inputs)``."""
    flat = _kernel_inputs(xs)
    if flat is None:  # NumPy's promoted sum, then the relu op
        y = relu_forward(numpy_merge.add_forward(*xs)[0])[0]
    else:
        y = _sum(flat, xs[0].shape, xs[0].dtype, _add_relu_pair)
    return y, (y, len(xs))


def add_relu_backward(dy, cache):
    """One array, ``dy`` where the output is positive (``dy * 0`` elsewhere), for every input."""
    y, n = cache
    return (relu_backward(dy, y),) * n
