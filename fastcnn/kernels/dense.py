"""Fully connected layer with the GEMMs split across Numba's threads, BLAS on one thread.

The arithmetic is NumPy's (``x @ w``, ``dy @ w.T``, ``x.T @ dy``); what this
implementation changes is who runs the threads. A multi-threaded BLAS call
leaves OpenBLAS's workers spinning for ~0.1 s afterwards, and in a training
step the next Numba kernel then shares the cores with them: the mnist_cnn
conv2 backward that follows the dense layers measured 6.3 ms in isolation and
8.9 ms right after a BLAS call. Here each Numba thread runs a single-threaded
GEMM on its own block of columns (forward, ``dx``) or rows (``dw``), so every
output element is written by exactly one GEMM (results never depend on the
thread count) and BLAS never starts its own threads.
"""

import numba
import numpy as np
from numba import prange

from fastcnn.kernels import _blas
from fastcnn.kernels._jit import parallel_kernel
from fastcnn.ops import dense as numpy_dense

__all__ = ["dense_forward", "dense_backward", "VARIANTS", "heuristic"]

#: Below this many multiply-adds a GEMM runs whole on the calling thread.
SPLIT_MIN_MACS = 1 << 18

#: Fewest weight-gradient rows per GEMM call worth cutting ``dw = x.T @ dy`` into
#: (mnist_cnn's dense1 at batch 64: 122 rows a call; its backward, median of 5 runs,
#: 1.38 -> 1.31 ms; vgg_mini's dense1 about even).
WEIGHT_MIN_ROWS = 16


@parallel_kernel
def _forward_kernel(y, x, w, b, G, by_rows):
    # y: (N, F) out; x: (N, IN); w: (IN, F); b: (F,) or size 0. Group g owns rows
    # n0..n1 (by_rows: x is the larger operand, each thread reads its share of it)
    # or columns f0..f1 (w is larger: each thread reads its share of the weights).
    N, F = y.shape
    for g in prange(G):
        n0, n1 = (g * N // G, (g + 1) * N // G) if by_rows else (0, N)
        f0, f1 = (0, F) if by_rows else (g * F // G, (g + 1) * F // G)
        if n1 == n0 or f1 == f0:
            continue
        out = y[n0:n1, f0:f1]  # rows strided when split by columns
        _blas.gemm(False, False, 1.0, x[n0:n1], w[:, f0:f1], 0.0, out)
        if b.size:
            for n in range(n0, n1):
                for f in range(f0, f1):
                    y[n, f] += b[f]


@parallel_kernel
def _backward_kernel(dx, dw, dy, x, w, G, sub):
    # dx: (N, IN) out; dw: (IN, F) out; dy: (N, F); x: (N, IN); w: (IN, F).
    # Group g owns input features i0..i1: dw rows and dx columns. dw is computed
    # sub rows per GEMM call (small enough for OpenBLAS's unpacked kernels:
    # _blas.small_gemm_rows).
    IN = w.shape[0]
    for g in prange(G):
        i0, i1 = g * IN // G, (g + 1) * IN // G
        if i1 == i0:
            continue
        for s0 in range(i0, i1, sub):
            s1 = min(s0 + sub, i1)
            _blas.gemm(True, False, 1.0, x[:, s0:s1], dy, 0.0, dw[s0:s1])  # dw = x.T @ dy
        _blas.gemm(False, True, 1.0, dy, w[i0:i1], 0.0, dx[:, i0:i1])  # dx = dy @ w.T


def heuristic(geometry):
    """``numba:split`` from :data:`SPLIT_MIN_MACS` multiply-adds (a fixed threshold), else ``numba:blas``."""
    (N, IN), (_, F) = geometry.x_shape, geometry.w_shape
    return "numba:blas" if N * IN * F < SPLIT_MIN_MACS else "numba:split"


def _groups():
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def dense_forward(x, w, b):
    """``y = x @ w + b`` through the variant :func:`heuristic` picks.

    Shape: x ``(N, IN)``, w ``(IN, F)``, b ``(F,)`` or None -> y ``(N, F)``.
    """
    if x.shape[0] * x.shape[1] * w.shape[1] < SPLIT_MIN_MACS:
        return blas_forward(x, w, b)
    return split_forward(x, w, b)


def dense_backward(dy, cache):
    """Gradients ``(dx, dw, db)`` of :func:`dense_forward`, by the variant that made ``cache``."""
    return (split_backward if cache[-1] == "split" else blas_backward)(dy, cache)


def blas_forward(x, w, b):
    """``numba:blas``: NumPy's path, one BLAS call (BLAS runs it on the calling thread when small)."""
    x = np.ascontiguousarray(x)
    y, (x, w, has_bias) = numpy_dense.dense_forward(x, np.ascontiguousarray(w, dtype=x.dtype), b)
    return y, (x, w, has_bias, "blas")


def blas_backward(dy, cache):
    """Gradients of :func:`blas_forward`."""
    x, w, has_bias, _ = cache
    return numpy_dense.dense_backward(np.ascontiguousarray(dy, dtype=x.dtype), (x, w, has_bias))


def split_forward(x, w, b):
    """``numba:split``: ``y = x @ w + b``, the GEMM split over Numba's threads, BLAS on one thread each."""
    x = np.ascontiguousarray(x)
    dtype = x.dtype
    w = np.ascontiguousarray(w, dtype=dtype)
    G = _groups()
    y = np.empty((x.shape[0], w.shape[1]), dtype=dtype)  # (N, F)
    bias = np.zeros(0, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,) or (0,)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x, w, bias, G, x.size > w.size)
    return y, (x, w, b is not None, "split")


def split_backward(dy, cache):
    """Gradients ``(dx, dw, db)`` of :func:`split_forward`; ``db`` is None without bias.

    Shape: dy ``(N, F)`` -> dx ``(N, IN)``, dw ``(IN, F)``, db ``(F,)``.
    """
    x, w, has_bias, _ = cache
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    G = _groups()
    dx = np.empty(x.shape, dtype=x.dtype)  # (N, IN)
    dw = np.empty(w.shape, dtype=x.dtype)  # (IN, F)
    with _blas.blas_single_threaded():
        sub = _blas.small_gemm_rows(x.shape[0], w.shape[1], x.dtype, WEIGHT_MIN_ROWS)
        _backward_kernel(dx, dw, dy, x, w, G, sub)
    return dx, dw, (dy.sum(axis=0) if has_bias else None)


#: variant -> (forward, backward). ``numba:blas`` is NumPy's path (one BLAS call, whatever
#: threads BLAS runs): the better one for GEMMs too small to split.
VARIANTS = {
    "numba:split": (split_forward, split_backward),
    "numba:blas": (blas_forward, blas_backward),
}
