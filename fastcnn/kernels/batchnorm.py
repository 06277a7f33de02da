"""Batch normalization as Numba kernels over ``(M, C)`` rows, parallel over blocks of rows.

NumPy's path makes ~6 full passes with temporaries (centre, square, scale,
shift) in each direction; here the forward is one reading pass (the sums of
``d`` and ``d^2`` for ``d = x - shift``, ``shift`` one sample of the channel, so
the variance ``E[d^2] - E[d]^2`` does not cancel) and one writing pass, the
backward one reading and one writing pass, with no full-size temporary. Per-channel sums are accumulated
in float64 (deliberately promoted: float32 partial sums over ``N * H * W``
rows would lose digits) in fixed blocks of :data:`BLOCK_ROWS` rows, then
added in block order: results do not depend on the thread count.
"""

import numpy as np
from numba import prange

from fastcnn.kernels._jit import parallel_kernel
from fastcnn.ops.batchnorm import batch_norm_fold

__all__ = ["batch_norm_forward", "batch_norm_backward"]

#: Rows per block of a partial sum (the unit of parallel work).
BLOCK_ROWS = 256


@parallel_kernel
def _stats_kernel(partial, x, shift):
    # partial: (G, 2, C) float64 out: per block of rows, sum(x - shift) and sum((x - shift)^2);
    # x: (M, C); shift: (C,) float64, one sample of each channel, so that the
    # differences are of the order of the spread and E[d^2] - E[d]^2 does not cancel.
    # Accumulators are local arrays, not partial itself: LLVM then vectorizes over C.
    M, C = x.shape
    G = partial.shape[0]
    for g in prange(G):
        s1 = np.zeros(C, dtype=np.float64)
        s2 = np.zeros(C, dtype=np.float64)
        for m in range(g * BLOCK_ROWS, min(M, (g + 1) * BLOCK_ROWS)):
            for c in range(C):
                d = x[m, c] - shift[c]
                s1[c] += d
                s2[c] += d * d
        for c in range(C):
            partial[g, 0, c] = s1[c]
            partial[g, 1, c] = s2[c]


@parallel_kernel
def _affine_kernel(y, x, scale, shift):
    # y: (M, C) out; x: (M, C); scale, shift: (C,) of y.dtype. y = x * scale + shift.
    M, C = x.shape
    G = (M + BLOCK_ROWS - 1) // BLOCK_ROWS
    for g in prange(G):
        for m in range(g * BLOCK_ROWS, min(M, (g + 1) * BLOCK_ROWS)):
            for c in range(C):
                y[m, c] = x[m, c] * scale[c] + shift[c]


@parallel_kernel
def _grad_sums_kernel(partial, dy, x, mean, inv_std):
    # partial: (G, 2, C) float64 out: per block sum(dy) and sum(dy * xhat);
    # dy, x: (M, C); mean, inv_std: (C,) of x.dtype.
    M, C = x.shape
    G = partial.shape[0]
    for g in prange(G):
        s1 = np.zeros(C, dtype=np.float64)
        s2 = np.zeros(C, dtype=np.float64)
        for m in range(g * BLOCK_ROWS, min(M, (g + 1) * BLOCK_ROWS)):
            for c in range(C):
                d = dy[m, c]
                s1[c] += d
                s2[c] += d * ((x[m, c] - mean[c]) * inv_std[c])
        for c in range(C):
            partial[g, 0, c] = s1[c]
            partial[g, 1, c] = s2[c]


@parallel_kernel
def _train_dx_kernel(dx, dy, x, mean, inv_std, g_scale, mean_dy, mean_dy_xhat):
    # dx: (M, C) out; dy, x: (M, C); the rest (C,) of x.dtype.
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    M, C = x.shape
    G = (M + BLOCK_ROWS - 1) // BLOCK_ROWS
    for g in prange(G):
        for m in range(g * BLOCK_ROWS, min(M, (g + 1) * BLOCK_ROWS)):
            for c in range(C):
                xhat = (x[m, c] - mean[c]) * inv_std[c]
                dx[m, c] = g_scale[c] * (dy[m, c] - mean_dy[c] - xhat * mean_dy_xhat[c])


def _rows(a, C, dtype):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1, C)  # (M, C)


def _blocks(M):
    return (M + BLOCK_ROWS - 1) // BLOCK_ROWS


def batch_norm_forward(x, gamma, beta, mean=None, var=None, *, epsilon):
    """Training mode (``mean``/``var`` None): batch statistics; else the given ones.

    ``cache[0], cache[1]`` are the mean and variance used, ``(C,)`` of ``x.dtype``.
    Shape: x ``(N, ..., C)``; gamma, beta, mean, var ``(C,)`` or None; y like x.
    """
    dtype = x.dtype
    C = x.shape[-1]
    rows = _rows(x, C, dtype)  # (M, C)
    M = rows.shape[0]
    training = mean is None
    if training:
        partial = np.empty((_blocks(M), 2, C), dtype=np.float64)  # (G, 2, C)
        shift = rows[0].astype(np.float64)  # (C,)
        _stats_kernel(partial, rows, shift)
        sums = partial.sum(axis=0) / M  # (2, C): E[d], E[d^2] with d = x - shift
        mean = (shift + sums[0]).astype(dtype)
        var = np.maximum(sums[1] - sums[0] * sums[0], 0.0).astype(dtype)
    else:
        mean, var = np.asarray(mean, dtype=dtype), np.asarray(var, dtype=dtype)
    scale, shift = batch_norm_fold(gamma, beta, mean, var, epsilon, dtype)
    y = np.empty_like(rows)  # (M, C)
    _affine_kernel(y, rows, scale, shift)
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + epsilon)).astype(dtype)
    return y.reshape(x.shape), (mean, var, rows, inv_std, gamma, beta is not None, training)


def batch_norm_backward(dy, cache):
    """Gradients ``(dx, dgamma, dbeta)``; ``dgamma``/``dbeta`` are None where gamma/beta were."""
    mean, var, rows, inv_std, gamma, has_beta, training = cache
    dtype = rows.dtype
    M, C = rows.shape
    d = _rows(dy, C, dtype)  # (M, C)
    partial = np.empty((_blocks(M), 2, C), dtype=np.float64)  # (G, 2, C)
    _grad_sums_kernel(partial, d, rows, mean, inv_std)
    sums = partial.sum(axis=0)  # (2, C) float64
    g_scale = inv_std if gamma is None else (gamma * inv_std).astype(dtype)  # (C,)
    dx = np.empty_like(d)  # (M, C)
    if training:
        _train_dx_kernel(dx, d, rows, mean, inv_std, g_scale, (sums[0] / M).astype(dtype),
                         (sums[1] / M).astype(dtype))
    else:
        _affine_kernel(dx, d, g_scale, np.zeros(C, dtype=dtype))
    dgamma = None if gamma is None else sums[1].astype(dtype)
    dbeta = sums[0].astype(dtype) if has_beta else None
    return dx.reshape(dy.shape), dgamma, dbeta
