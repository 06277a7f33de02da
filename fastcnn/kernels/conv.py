"""2-D convolution (NHWC, HWIO) as cache-sized im2col blocks, each multiplied in place.

The NumPy path copies every window of the batch into one ``cols`` matrix
(42 MB at the mnist_cnn conv2 shape), writes it to memory, reads it back in one
big GEMM and keeps it for the backward pass. Here the output rows are split
among a fixed number of *groups* (one per Numba thread), and each group walks
its rows in blocks of about :data:`BLOCK_BYTES` of ``cols``: im2col the block
into the group's own buffer (it stays in L2), one BLAS GEMM from inside the
kernel (:mod:`fastcnn.kernels._blas`, BLAS itself on one thread), then the
epilogue (bias, and ReLU when fused) while the output block is still in cache.

Backward recomputes each block's ``cols`` from the cached input instead of
storing them (cheaper than a round trip through memory, and 42 MB less to
hold): ``dw += cols.T @ dy`` into the group's own partial sum,
``dcols = dy @ w.T`` into the same buffer, and col2im of the block into
``dx``. Groups own whole images in backward, so their ``dx`` writes are
disjoint; the partial ``dw``/``db`` are added in group order at the end. The
number of groups is fixed per process (``NUMBA_NUM_THREADS``), not by the
threads in use, so results are bit-identical at any ``set_num_threads``.

``relu=True`` (the ``conv2d_relu`` op: a Conv2D followed by a ReLU) applies
``max(y, 0)`` in the epilogue and masks ``dy`` with ``y > 0`` per block in
backward, so neither the pre-activation nor a separate ReLU pass exists.

This is the ``numba:im2col`` variant of ``conv2d`` and ``conv2d_relu``; the
shared block machinery lives in :mod:`fastcnn.kernels._blockgemm`.

Without a usable BLAS (:data:`fastcnn.kernels._blas.AVAILABLE` false) the
previous implementation, one im2col matrix and NumPy GEMMs
(:mod:`fastcnn.kernels.conv_im2col`), is used, and ``conv2d_relu`` is not
registered (the registry then composes conv2d and relu).
"""

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels import _blas, conv_im2col
from fastcnn.kernels._blockgemm import (BLOCK_BYTES, backward_buffers, backward_gemm_rows, block_backward, block_rows,
                                        finish_backward, forward_gemm, forward_gemm_rows, groups, kmajor, start_group)
from fastcnn.kernels._im2col import im2col_rows, im2col_rows_kmajor, scratch
from fastcnn.kernels._jit import kernel, parallel_kernel

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_relu_forward", "conv2d_relu_backward", "BLOCK_BYTES"]

@kernel
def _bias_relu(out, b, relu):
    # out: (rows, F) in/out: + b (size 0: none), then max(., 0) when relu (NaN passes, as in relu).
    zero = out.dtype.type(0)
    if b.size == 0 and not relu:
        return
    for t in range(out.shape[0]):
        row = out[t]  # (F,)
        for f in range(out.shape[1]):
            v = row[f] + b[f] if b.size else row[f]
            row[f] = zero if (relu and v <= zero) else v


@parallel_kernel
def _forward_kernel(y, x, w2, b, relu, kmajor, ws, block, sub, OH, OW, KH, KW, SH, SW, PT, PL):
    # y: (M, F) out, M = N*OH*OW output pixels; x: (N, H, W*C); w2: (K, F);
    # b: (F,) or size 0 for no bias; ws: (G, block, K) one im2col buffer per group,
    # used as (K, block) when kmajor; sub: rows per GEMM call (forward_gemm_rows).
    M = y.shape[0]
    G, _, K = ws.shape
    for g in prange(G):
        lo, hi = g * M // G, (g + 1) * M // G  # this group's output rows
        for r0 in range(lo, hi, block):
            r1 = min(r0 + block, hi)
            out = y[r0:r1]  # (rows, F)
            colsT = ws[g].reshape(K, block)[:, :r1 - r0]  # (K, rows), when kmajor
            cols = ws[g, :r1 - r0]  # (rows, K)
            if kmajor:
                im2col_rows_kmajor(colsT, x, r0, r1, OH, OW, KH, KW, SH, SW, PT, PL)
            else:
                im2col_rows(cols, x, r0, r1, OH, OW, KH, KW, SH, SW, PT, PL)
            forward_gemm(out, cols, colsT, kmajor, w2, sub)
            _bias_relu(out, b, relu)


@parallel_kernel
def _backward_kernel(dx, dw_part, db_part, dy, y, x, wT, relu, kmajor, need_dx, ws, ws_dy, ones, runs, block, sub_w,
                     sub_x, OH, OW, KH, KW, SH, SW, PT, PL):
    # dx: (N, H, W*C) out (size 0 when not needed); dw_part: (G, K, F) out, one
    # partial sum per group; db_part: (G, 1, F) out (size 0 without bias); dy: (M, F);
    # y: (M, F) the forward output (read only when relu); x: (N, H, W*C); wT: (F, K);
    # ws: (G, block, K) im2col / dcols buffers; ws_dy: (G, block, F) masked dy;
    # ones: (1, block) of ones (db = ones @ dy, a GEMM too); runs: (G, 1) scratch, the
    # block's first row (nothing is allocated inside the parallel loop).
    N = x.shape[0]
    F = dy.shape[1]
    G, _, K = ws.shape
    P = OH * OW
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    for g in prange(G):
        n0, n1 = g * N // G, (g + 1) * N // G  # whole images: dx writes stay disjoint
        start_group(dx, dw_part, db_part, g, n0, n1, need_dx)
        dw = dw_part[g]
        for r0 in range(n0 * P, n1 * P, block):
            r1 = min(r0 + block, n1 * P)
            rows = r1 - r0
            if relu:
                dyb = ws_dy[g, :rows]  # (rows, F)
                for t in range(rows):
                    src, ys, dst = dy[r0 + t], y[r0 + t], dyb[t]  # (F,) each
                    for f in range(F):
                        # A multiply, as relu's backward: NaN/inf in dy propagate.
                        dst[f] = src[f] * (one if ys[f] > zero else zero)
            else:
                dyb = dy[r0:r1]
            runs[g, 0] = r0
            block_backward(dx, dw, db_part[g], dyb, x, wT, ws[g], ones, runs[g], rows, kmajor, need_dx,
                           sub_w, sub_x, OH, OW, KH, KW, SH, SW, PT, PL)


def _forward(x, w, b, stride, padding, workspace, need_cache, relu):
    x = np.ascontiguousarray(x)
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (SH, SW), ((PT, _), (PL, _)) = stride, padding
    OH, OW = output_hw((H, W), (KH, KW), stride, padding)
    K, M, G = KH * KW * C, N * OH * OW, groups()
    dtype = x.dtype
    w2 = np.ascontiguousarray(w, dtype=dtype).reshape(K, F)  # (KH*KW*C, F)
    bias = np.zeros(0, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,) or (0,)
    block = block_rows(K, dtype.itemsize, M, G)
    ws = scratch(workspace, "cols", (G, block, K), dtype)  # (G, block, K)
    y = np.empty((M, F), dtype=dtype)  # (N*OH*OW, F)
    x3 = x.reshape(N, H, W * C)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x3, w2, bias, relu, kmajor(KW, C), ws, block, forward_gemm_rows(K, F, dtype),
                        OH, OW, KH, KW, SH, SW, PT, PL)
    y = y.reshape(N, OH, OW, F)
    cache = None
    if need_cache:
        cache = (x, y if relu else None, w2, b is not None, relu, (KH, KW), stride, padding, workspace)
    return y, cache


def _backward(dy, cache, need_dx):
    x, y, w2, has_bias, relu, (KH, KW), (SH, SW), ((PT, _), (PL, _)), workspace = cache
    N, H, W, C = x.shape
    K, F = w2.shape
    _, OH, OW, _ = dy.shape
    M, G, dtype = N * OH * OW, groups(), x.dtype
    dy2 = np.ascontiguousarray(dy, dtype=dtype).reshape(M, F)  # (N*OH*OW, F)
    y2 = dy2 if y is None else y.reshape(M, F)  # (N*OH*OW, F), read only when relu
    block = block_rows(K, dtype.itemsize, M, G)
    ws, ws_dy, ones, dw_part, db_part, dx = backward_buffers(workspace, G, block, block if relu else 0, K, F,
                                                             has_bias, need_dx, x.shape, dtype)
    with _blas.blas_single_threaded():
        _backward_kernel(dx, dw_part, db_part, dy2, y2, x.reshape(N, H, W * C), np.ascontiguousarray(w2.T), relu,
                         kmajor(KW, C), need_dx, ws, ws_dy, ones, np.empty((G, 1), dtype=np.int64), block,
                         *backward_gemm_rows(K, F, dtype),
                         OH, OW, KH, KW, SH, SW, PT, PL)
    return finish_backward(dx, dw_part, db_part, x.shape, (KH, KW, C, F), has_bias, need_dx)


def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """2-D cross-correlation of NHWC ``x`` with HWIO ``w``, plus ``b``.

    ``workspace`` (a dict kept by the caller) holds the per-group im2col
    buffers across calls; with ``need_cache=False`` (inference) nothing is kept.

    Shape:
        x (N, H, W, C), w (KH, KW, C, F), b (F,) or None -> y (N, OH, OW, F)
    """
    return _forward(x, w, b, stride, padding, workspace, need_cache, False)


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_forward`: ``(dx, dw, db)``; ``db`` is None without bias,
    ``dx`` is None with ``need_dx=False`` (skipping the dcols GEMM and col2im).

    Shape: dy ``(N, OH, OW, F)`` -> dx ``(N, H, W, C)``, dw ``(KH, KW, C, F)``, db ``(F,)``.
    """
    return _backward(dy, cache, need_dx)


def conv2d_relu_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """``max(conv2d(x, w, b), 0)`` in one pass (the ReLU is the GEMM block's epilogue).

    Shape: as :func:`conv2d_forward`.
    """
    return _forward(x, w, b, stride, padding, workspace, need_cache, True)


def conv2d_relu_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_relu_forward`; ``dy`` is the gradient of the ReLU's output
    (masked with ``y > 0`` block by block: the gradient at exactly 0 is 0)."""
    return _backward(dy, cache, need_dx)


if not _blas.AVAILABLE:  # pragma: no cover - NumPy without a BLAS we can bind
    conv2d_forward = conv_im2col.conv2d_forward  # noqa: F811
    conv2d_backward = conv_im2col.conv2d_backward  # noqa: F811
