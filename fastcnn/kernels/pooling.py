"""Max and average pooling as Numba kernels (NHWC), parallel over the batch.

Padding is never materialized: a padded position of a max-pool window reads as
``-inf`` and one of an average-pool window is skipped (the mean is over the
window's unpadded elements, TensorFlow/Keras semantics). Max pooling caches the
argmax as a small integer (the row-major index inside the window), so backward
is a scatter through it; the first maximum wins ties and the first NaN wins
over everything, exactly as :func:`numpy.argmax` does.
"""

import functools

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels._jit import inline_kernel, parallel_kernel

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
]


@functools.lru_cache(maxsize=None)
def _index_dtype(window):
    """Smallest signed integer dtype that holds every index of a window of ``window`` elements."""
    for dtype in (np.int8, np.int16, np.int32):
        if window - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@inline_kernel
def max_into(best, arg, v, k):
    """Fold window position ``k``'s values ``v`` into the running maxima ``best`` and their
    positions ``arg`` (all ``(C,)``): strictly greater keeps the first maximum, and a NaN
    replaces a non-NaN maximum and is then never replaced, as :func:`numpy.argmax`.
    1-D rows and branch-free selects let LLVM vectorize over C."""
    for c in range(best.shape[0]):
        x, cur = v[c], best[c]
        take = (x > cur) | ((x != x) & (cur == cur))
        best[c] = x if take else cur
        arg[c] = k if take else arg[c]


@parallel_kernel
def _max_pool_forward_kernel(y, arg, x, PH, PW, SH, SW, PT, PL):
    # y: (N, OH, OW, C) out; arg: (N, OH, OW, C) out, window index; x: (N, H, W, C)
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    neg_inf = y.dtype.type(-np.inf)
    for n in prange(N):
        for oh in range(OH):
            h0 = oh * SH - PT
            for ow in range(OW):
                w0 = ow * SW - PL
                yrow = y[n, oh, ow]  # (C,)
                arow = arg[n, oh, ow]  # (C,)
                # Window position 0 seeds the running maximum (-inf if padded).
                if 0 <= h0 < H and 0 <= w0 < W:
                    xrow = x[n, h0, w0]  # (C,)
                    for c in range(C):
                        yrow[c] = xrow[c]
                        arow[c] = 0
                else:
                    for c in range(C):
                        yrow[c] = neg_inf
                        arow[c] = 0
                for i in range(PH):
                    h = h0 + i
                    if h < 0 or h >= H:
                        continue  # padded row: -inf never beats the seed
                    for j in range(PW):
                        w = w0 + j
                        if (i == 0 and j == 0) or w < 0 or w >= W:
                            continue
                        max_into(yrow, arow, x[n, h, w], arow.dtype.type(i * PW + j))


@parallel_kernel
def _max_pool_backward_kernel(dx, dy, arg, PW, SH, SW, PT, PL):
    # dx: (N, H, W, C) out; dy: (N, OH, OW, C); arg: (N, OH, OW, C) window index
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    zero = dx.dtype.type(0)
    for n in prange(N):  # each sample writes only its own dx[n]: disjoint
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    dx[n, h, w, c] = zero
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    k = arg[n, oh, ow, c]
                    h = oh * SH - PT + k // PW
                    w = ow * SW - PL + k % PW
                    if 0 <= h < H and 0 <= w < W:  # a padded argmax drops its gradient
                        dx[n, h, w, c] += dy[n, oh, ow, c]


@parallel_kernel
def _avg_pool_forward_kernel(y, x, PH, PW, SH, SW, PT, PL):
    # y: (N, OH, OW, C) out; x: (N, H, W, C)
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    for n in prange(N):
        for oh in range(OH):
            h0 = oh * SH - PT
            h_lo, h_hi = max(h0, 0), min(h0 + PH, H)
            for ow in range(OW):
                w0 = ow * SW - PL
                w_lo, w_hi = max(w0, 0), min(w0 + PW, W)
                for c in range(C):
                    y[n, oh, ow, c] = zero
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        for c in range(C):
                            y[n, oh, ow, c] += x[n, h, w, c]
                scale = one / y.dtype.type((h_hi - h_lo) * (w_hi - w_lo))
                for c in range(C):
                    y[n, oh, ow, c] *= scale


@parallel_kernel
def _avg_pool_backward_kernel(dx, g, PH, PW, SH, SW, PT, PL):
    # dx: (N, H, W, C) out; g: (N, OH, OW, C), each window's gradient already
    # divided by its element count (see avg_pool2d_backward). Only additions
    # here: a multiply feeding an add is fused (or not) differently by the
    # fast-math code Numba compiles and the code it loads from its cache.
    N, H, W, C = dx.shape
    OH, OW = g.shape[1], g.shape[2]
    zero = dx.dtype.type(0)
    for n in prange(N):  # disjoint per sample
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    dx[n, h, w, c] = zero
        for oh in range(OH):
            h0 = oh * SH - PT
            h_lo, h_hi = max(h0, 0), min(h0 + PH, H)
            for ow in range(OW):
                w0 = ow * SW - PL
                w_lo, w_hi = max(w0, 0), min(w0 + PW, W)
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        for c in range(C):
                            dx[n, h, w, c] += g[n, oh, ow, c]


def _window_counts(size, pool, stride, pad_before, out):
    """Unpadded elements of each of ``out`` windows along one axis: ``(out,)`` int64."""
    start = np.arange(out) * stride - pad_before
    return np.minimum(start + pool, size) - np.maximum(start, 0)


def max_pool2d_forward(x, *, pool_size, stride, padding):
    """Max pooling with a cached argmax; padding reads as ``-inf``.

    Shape: x ``(N, H, W, C)`` -> y ``(N, OH, OW, C)``.
    """
    x = np.ascontiguousarray(x)
    (PH, PW), (SH, SW), ((PT, _), (PL, _)) = pool_size, stride, padding
    N, H, W, C = x.shape
    OH, OW = output_hw((H, W), pool_size, stride, padding)
    y = np.empty((N, OH, OW, C), dtype=x.dtype)  # (N, OH, OW, C)
    arg = np.empty((N, OH, OW, C), dtype=_index_dtype(PH * PW))  # (N, OH, OW, C) index in window
    _max_pool_forward_kernel(y, arg, x, PH, PW, SH, SW, PT, PL)
    return y, (arg, x.shape, x.dtype, pool_size, stride, padding)


def max_pool2d_backward(dy, cache):
    """Route each window's gradient to its first maximum. Shape: dy ``(N, OH, OW, C)`` -> dx ``(N, H, W, C)``."""
    arg, x_shape, dtype, (PH, PW), (SH, SW), ((PT, _), (PL, _)) = cache
    dy = np.ascontiguousarray(dy, dtype=dtype)
    dx = np.empty(x_shape, dtype=dtype)  # (N, H, W, C)
    _max_pool_backward_kernel(dx, dy, arg, PW, SH, SW, PT, PL)
    return dx


def avg_pool2d_forward(x, *, pool_size, stride, padding):
    """Average pooling over each window's unpadded elements.

    Shape: x ``(N, H, W, C)`` -> y ``(N, OH, OW, C)``.
    """
    x = np.ascontiguousarray(x)
    (PH, PW), (SH, SW), ((PT, _), (PL, _)) = pool_size, stride, padding
    N, H, W, C = x.shape
    OH, OW = output_hw((H, W), pool_size, stride, padding)
    y = np.empty((N, OH, OW, C), dtype=x.dtype)  # (N, OH, OW, C)
    _avg_pool_forward_kernel(y, x, PH, PW, SH, SW, PT, PL)
    return y, (x.shape, x.dtype, pool_size, stride, padding)


def avg_pool2d_backward(dy, cache):
    """Spread each window's gradient evenly over its unpadded elements. Shape: dy ``(N, OH, OW, C)`` -> dx ``(N, H, W, C)``."""
    x_shape, dtype, (PH, PW), (SH, SW), ((PT, _), (PL, _)) = cache
    dy = np.asarray(dy, dtype=dtype)
    _, H, W, _ = x_shape
    OH, OW = dy.shape[1], dy.shape[2]
    counts = np.outer(_window_counts(H, PH, SH, PT, OH), _window_counts(W, PW, SW, PL, OW))  # (OH, OW)
    # Divided by NumPy, so every compilation of the kernel adds the same values.
    g = np.ascontiguousarray(dy / counts.astype(dtype)[:, :, None])  # (N, OH, OW, C)
    dx = np.empty(x_shape, dtype=dtype)  # (N, H, W, C)
    _avg_pool_backward_kernel(dx, g, PH, PW, SH, SW, PT, PL)
    return dx
