"""2-D convolution (NHWC, HWIO): Numba im2col/col2im around NumPy's GEMMs.

The first Numba convolution, kept as the fallback of :mod:`fastcnn.kernels.conv`
where no BLAS can be called from a kernel. One im2col matrix for the whole
batch, kept for backward. The GEMMs stay with BLAS (``@``). The kernels replace what NumPy needs
temporaries for: im2col copies windows straight from the unpadded input
(writing zeros where a window hangs over the padding, so no padded copy of
``x`` is made), and col2im scatter-adds window gradients onto ``dx`` in one
pass, in parallel over the batch (each sample writes only its own ``dx[n]``),
cropping the padding as it goes. Two small serial kernels add the bias
(forward) and sum its gradient (backward) faster than NumPy's broadcasting.
"""

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels._im2col import col2im_rows, im2col_rows, scratch
from fastcnn.kernels._jit import kernel, parallel_kernel

__all__ = ["conv2d_forward", "conv2d_backward"]


@parallel_kernel
def _im2col_kernel(cols, x, OH, OW, KH, KW, SH, SW, PT, PL):
    # cols: (N*OH*OW, KH*KW*C) out; x: (N, H, W*C)
    P = OH * OW
    for n in prange(x.shape[0]):
        im2col_rows(cols[n * P:(n + 1) * P], x, n * P, (n + 1) * P, OH, OW, KH, KW, SH, SW, PT, PL)


@parallel_kernel
def _col2im_kernel(dx, dcols, OH, OW, KH, KW, SH, SW, PT, PL):
    # dx: (N, H, W*C) out; dcols: (N*OH*OW, KH*KW*C)
    P = OH * OW
    zero = dx.dtype.type(0)
    for n in prange(dx.shape[0]):  # each sample writes only dx[n]: disjoint
        dx[n] = zero
        col2im_rows(dx, dcols[n * P:(n + 1) * P], n * P, (n + 1) * P, OH, OW, KH, KW, SH, SW, PT, PL)


@kernel
def _add_bias_kernel(y, b):
    # y: (M, F) in/out, one row per output pixel; b: (F,). NumPy's broadcast add
    # walks the short F axis with strides and is ~4x slower than this.
    M, F = y.shape
    for m in range(M):
        row = y[m]  # (F,)
        for f in range(F):
            row[f] += b[f]


@kernel
def _bias_grad_kernel(db, dy):
    # db: (F,) out; dy: (M, F). Row by row, as NumPy's axis-0 sum adds, ~4x faster.
    M, F = dy.shape
    for f in range(F):
        db[f] = db.dtype.type(0)
    for m in range(M):
        row = dy[m]  # (F,)
        for f in range(F):
            db[f] += row[f]


#: Rows of ``cols`` per chunk in inference (``need_cache=False``): a chunk's
#: ``cols`` (rows x KH*KW*C floats) stays small enough to be read back by the
#: GEMM from cache, and memory stays bounded at any batch size.
INFERENCE_CHUNK_ROWS = 8192


def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """2-D cross-correlation of NHWC ``x`` with HWIO ``w``, plus ``b``.

    ``workspace`` (a dict kept by the caller) holds ``cols`` across calls;
    ``need_cache=False`` (inference) runs im2col + GEMM in chunks of
    :data:`INFERENCE_CHUNK_ROWS` rows and returns ``cache=None``.

    Shape:
        x (N, H, W, C), w (KH, KW, C, F), b (F,) or None -> y (N, OH, OW, F)
    """
    x = np.ascontiguousarray(x)
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (SH, SW), ((PT, _), (PL, _)) = stride, padding
    OH, OW = output_hw((H, W), (KH, KW), stride, padding)
    K = KH * KW * C
    w2 = np.ascontiguousarray(w, dtype=x.dtype).reshape(K, F)  # (KH*KW*C, F)
    x3 = x.reshape(N, H, W * C)
    if need_cache:
        cols = scratch(workspace, "cols", (N * OH * OW, K), x.dtype)  # (N*OH*OW, KH*KW*C)
        _im2col_kernel(cols, x3, OH, OW, KH, KW, SH, SW, PT, PL)
        y = cols @ w2  # (N*OH*OW, F)
        cache = (cols, w2, b is not None, x.shape, w.shape, stride, padding, workspace)
    else:
        chunk = max(1, min(N, INFERENCE_CHUNK_ROWS // (OH * OW)))
        cols = scratch(workspace, "cols_chunk", (chunk * OH * OW, K), x.dtype)  # (chunk*OH*OW, K)
        y = np.empty((N * OH * OW, F), dtype=x.dtype)  # (N*OH*OW, F)
        for n0 in range(0, N, chunk):
            n1 = min(N, n0 + chunk)
            part = cols[: (n1 - n0) * OH * OW]  # (n*OH*OW, K)
            _im2col_kernel(part, x3[n0:n1], OH, OW, KH, KW, SH, SW, PT, PL)
            np.matmul(part, w2, out=y[n0 * OH * OW:n1 * OH * OW])
        cache = None
    if b is not None:
        _add_bias_kernel(y, np.ascontiguousarray(b, dtype=x.dtype))
    return y.reshape(N, OH, OW, F), cache


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_forward`: ``(dx, dw, db)``; ``db`` is None without bias,
    ``dx`` is None with ``need_dx=False`` (skipping the dcols GEMM and col2im).

    Shape: dy ``(N, OH, OW, F)`` -> dx ``(N, H, W, C)``, dw ``(KH, KW, C, F)``, db ``(F,)``.
    """
    cols, w2, has_bias, x_shape, w_shape, (SH, SW), ((PT, _), (PL, _)), workspace = cache
    KH, KW, C, F = w_shape
    N, OH, OW, _ = dy.shape
    dy2 = np.ascontiguousarray(dy, dtype=cols.dtype).reshape(N * OH * OW, F)  # (N*OH*OW, F)
    dw = (cols.T @ dy2).reshape(w_shape)  # (KH, KW, C, F)
    db = None
    if has_bias:
        db = np.empty(F, dtype=cols.dtype)  # (F,)
        _bias_grad_kernel(db, dy2)
    if not need_dx:
        return None, dw, db
    dcols = scratch(workspace, "dcols", (N * OH * OW, KH * KW * C), cols.dtype)  # (N*OH*OW, KH*KW*C)
    np.matmul(dy2, w2.T, out=dcols)
    dx = np.empty(x_shape, dtype=cols.dtype)  # (N, H, W, C)
    _col2im_kernel(dx.reshape(N, x_shape[1], x_shape[2] * C), dcols, OH, OW, KH, KW, SH, SW, PT, PL)
    return dx, dw, db
