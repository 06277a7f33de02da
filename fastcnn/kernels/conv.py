"""2-D convolution (NHWC, HWIO): Numba im2col/col2im around BLAS GEMMs.

The GEMMs stay with BLAS (``@``). The kernels replace what NumPy needs
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
from fastcnn.kernels._jit import kernel, parallel_kernel

__all__ = ["conv2d_forward", "conv2d_backward"]


@parallel_kernel
def _im2col_kernel(cols, x, C, SH, SW, PT, PL):
    # cols: (N, OH, OW, KH, KW*C) out; x: (N, H, W*C), rows flattened so a window
    # row is one contiguous run of KW*C elements in both arrays.
    N, H, WC = x.shape
    _, OH, OW, KH, KWC = cols.shape
    zero = cols.dtype.type(0)
    for n in prange(N):
        for oh in range(OH):
            for ow in range(OW):
                start = (ow * SW - PL) * C  # flat column of the window's first element
                inside = start >= 0 and start + KWC <= WC
                for i in range(KH):
                    h = oh * SH - PT + i
                    dst = cols[n, oh, ow, i]  # (KW*C,)
                    if h < 0 or h >= H:
                        for t in range(KWC):
                            dst[t] = zero
                    elif inside:
                        # Copying between 1-D views indexed by the loop counter
                        # (never negative) vectorizes; 3-D indexing with a computed
                        # column pays a negative-index check per element.
                        src = x[n, h, start:start + KWC]  # (KW*C,)
                        for t in range(KWC):
                            dst[t] = src[t]
                    else:  # the window hangs over the left or right padding
                        for t in range(KWC):
                            s = start + t
                            dst[t] = x[n, h, s] if 0 <= s < WC else zero


@parallel_kernel
def _col2im_kernel(dx, dcols, C, SH, SW, PT, PL):
    # dx: (N, H, W*C) out; dcols: (N, OH, OW, KH, KW*C). Gradient on padding is dropped.
    N, H, WC = dx.shape
    _, OH, OW, KH, KWC = dcols.shape
    zero = dx.dtype.type(0)
    for n in prange(N):  # each sample writes only dx[n]: disjoint
        for h in range(H):
            row = dx[n, h]  # (W*C,)
            for t in range(WC):
                row[t] = zero
        for oh in range(OH):
            for ow in range(OW):
                start = (ow * SW - PL) * C
                inside = start >= 0 and start + KWC <= WC
                for i in range(KH):
                    h = oh * SH - PT + i
                    if h < 0 or h >= H:
                        continue
                    src = dcols[n, oh, ow, i]  # (KW*C,)
                    if inside:
                        dst = dx[n, h, start:start + KWC]  # (KW*C,), see _im2col_kernel
                        for t in range(KWC):
                            dst[t] += src[t]
                    else:
                        for t in range(KWC):
                            s = start + t
                            if 0 <= s < WC:
                                dx[n, h, s] += src[t]


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


def _scratch(workspace, key, shape, dtype):
    """A reusable buffer ``workspace[key]`` of ``shape``/``dtype`` (fresh when ``workspace`` is None).

    A fresh 40 MB array costs ~10k page faults on first touch every step (glibc
    returns allocations above 32 MB to the OS on free); reusing it costs none.
    """
    if workspace is None:
        return np.empty(shape, dtype=dtype)
    buf = workspace.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = workspace[key] = np.empty(shape, dtype=dtype)
    return buf


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
        cols = _scratch(workspace, "cols", (N, OH, OW, KH, KW * C), x.dtype)  # (N, OH, OW, KH, KW*C)
        _im2col_kernel(cols, x3, C, SH, SW, PT, PL)
        cols = cols.reshape(N * OH * OW, K)
        y = cols @ w2  # (N*OH*OW, F)
        cache = (cols, w2, b is not None, x.shape, w.shape, stride, padding, workspace)
    else:
        chunk = max(1, min(N, INFERENCE_CHUNK_ROWS // (OH * OW)))
        cols = _scratch(workspace, "cols_chunk", (chunk, OH, OW, KH, KW * C), x.dtype)
        y = np.empty((N * OH * OW, F), dtype=x.dtype)  # (N*OH*OW, F)
        for n0 in range(0, N, chunk):
            n1 = min(N, n0 + chunk)
            part = cols[: n1 - n0]  # (n, OH, OW, KH, KW*C)
            _im2col_kernel(part, x3[n0:n1], C, SH, SW, PT, PL)
            np.matmul(part.reshape(-1, K), w2, out=y[n0 * OH * OW:n1 * OH * OW])
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
    dcols = _scratch(workspace, "dcols", (N * OH * OW, KH * KW * C), cols.dtype)  # (N*OH*OW, KH*KW*C)
    np.matmul(dy2, w2.T, out=dcols)
    dcols = dcols.reshape(N, OH, OW, KH, KW * C)
    dx = np.empty(x_shape, dtype=cols.dtype)  # (N, H, W, C)
    _col2im_kernel(dx.reshape(N, x_shape[1], x_shape[2] * C), dcols, C, SH, SW, PT, PL)
    return dx, dw, db
