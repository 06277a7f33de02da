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

Without a usable BLAS (:data:`fastcnn.kernels._blas.AVAILABLE` false) the
previous implementation, one im2col matrix and NumPy GEMMs
(:mod:`fastcnn.kernels.conv_im2col`), is used, and ``conv2d_relu`` is not
registered (the registry then composes conv2d and relu).
"""

import numba
import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels import _blas, conv_im2col
from fastcnn.kernels._im2col import col2im_rows, im2col_rows, im2col_rows_kmajor, scratch
from fastcnn.kernels._jit import kernel, parallel_kernel

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_relu_forward", "conv2d_relu_backward", "BLOCK_BYTES"]

#: Target size of one group's im2col block: well inside a 1-2 MB L2 with the
#: GEMM's packed panels beside it. (mnist_cnn conv2: 576-row blocks, one image.)
BLOCK_BYTES = 640 * 1024

#: Fewest rows per GEMM call worth cutting a block into (:func:`forward_gemm_rows`): for the
#: forward and input-gradient GEMMs, and for the weight gradient. Measured at
#: vgg_mini's conv4 (``K=576, F=64``: 27 rows a call), the forward ran 1.14x
#: slower cut and the input gradient no faster, the weight gradient 1.17x faster.
MIN_FORWARD_ROWS = 32
MIN_WEIGHT_ROWS = 16

#: The forward GEMM is cut only for at most this many filters: with 64 (vgg_mini's
#: conv3, mnist_cnn's conv2) the cut forward ran 1.07-1.09x slower, while its
#: input-gradient GEMM (``(rows, F) x (F, K)``, the same untransposed form) still
#: ran 1.04x faster cut.
FORWARD_CUT_MAX_F = 32

#: Window rows shorter than this (``KW*C`` elements: a first layer's 3x3 on one
#: channel is 3) are im2col'ed transposed, in runs along the output row instead.
KMAJOR_BELOW = 16

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
def _backward_kernel(dx, dw_part, db_part, dy, y, x, wT, relu, kmajor, need_dx, ws, ws_dy, ones, block, sub_w,
                     sub_x, OH, OW, KH, KW, SH, SW, PT, PL):
    # dx: (N, H, W*C) out (size 0 when not needed); dw_part: (G, K, F) out, one
    # partial sum per group; db_part: (G, 1, F) out (size 0 without bias); dy: (M, F);
    # y: (M, F) the forward output (read only when relu); x: (N, H, W*C); wT: (F, K);
    # ws: (G, block, K) im2col / dcols buffers; ws_dy: (G, block, F) masked dy;
    # ones: (1, block) of ones (db = ones @ dy, a GEMM too).
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
            block_backward(dx, dw, db_part[g], dyb, x, wT, ws[g], ones, np.array([r0]), rows, kmajor, need_dx,
                           sub_w, sub_x, OH, OW, KH, KW, SH, SW, PT, PL)


@kernel
def rows_gemm(c, a, b, sub):
    """``c = a @ b``, ``sub`` rows of ``a`` and ``c`` per GEMM call. ``c``: ``(rows, n)``; ``a``: ``(rows, k)``."""
    rows = c.shape[0]
    for s0 in range(0, rows, sub):
        s1 = min(s0 + sub, rows)
        _blas.gemm(False, False, 1.0, a[s0:s1], b, 0.0, c[s0:s1])


@kernel
def forward_gemm(out, cols, colsT, kmajor, w2, sub):
    """``out = cols @ w2`` (``colsT.T @ w2`` when kmajor), ``sub`` rows per GEMM call.

    ``out``: ``(rows, F)``; ``cols``: ``(rows, K)``, or ``colsT``: ``(K, rows)``.
    """
    if not kmajor:
        rows_gemm(out, cols, w2, sub)
        return
    rows = out.shape[0]
    for s0 in range(0, rows, sub):
        s1 = min(s0 + sub, rows)
        _blas.gemm(True, False, 1.0, colsT[:, s0:s1], w2, 0.0, out[s0:s1])


@kernel
def weight_gemm(dw, cols, colsT, kmajor, dyb, sub):
    """``dw += cols.T @ dyb`` (``colsT @ dyb`` when kmajor), ``sub`` rows per GEMM call, in order."""
    rows = dyb.shape[0]
    for s0 in range(0, rows, sub):
        s1 = min(s0 + sub, rows)
        if kmajor:
            _blas.gemm(False, False, 1.0, colsT[:, s0:s1], dyb[s0:s1], 1.0, dw)
        else:
            _blas.gemm(True, False, 1.0, cols[s0:s1], dyb[s0:s1], 1.0, dw)


@kernel
def block_backward(dx, dw, db, dyb, x, wT, ws, ones, runs, L, kmajor, need_dx, sub_w, sub_x,
                   OH, OW, KH, KW, SH, SW, PT, PL):
    """One block's share of a backward pass, given its gradient at the convolution output.

    ``dyb``: ``(rows, F)``, the block's rows, which are ``len(runs)`` runs of ``L``
    output pixels starting at pixels ``runs``. ``db``: ``(1, F)`` += the rows'
    sum (size 0: no bias); ``dw``: ``(K, F)`` += ``cols.T @ dyb``, ``cols`` the
    block's im2col in ``ws``: ``(R, K)`` (used as ``(K, R)`` when kmajor); with
    ``need_dx``, ``dx`` += col2im of ``dyb @ wT``, ``wT``: ``(F, K)`` the weights
    transposed (a GEMM of untransposed operands, which can take OpenBLAS's small
    kernels). ``sub_w``, ``sub_x``: rows per GEMM call (:func:`backward_gemm_rows`) of the
    weight and input gradients.
    """
    rows = dyb.shape[0]
    R, K = ws.shape
    if db.size:
        _blas.gemm(False, False, 1.0, ones[:, :rows], dyb, 1.0, db)  # db += sum of rows
    colsT = ws.reshape(K, R)[:, :rows]  # (K, rows), when kmajor
    cols = ws[:rows]  # (rows, K)
    for q in range(runs.shape[0]):
        r, t = runs[q], q * L
        if kmajor:
            im2col_rows_kmajor(colsT[:, t:t + L], x, r, r + L, OH, OW, KH, KW, SH, SW, PT, PL)
        else:
            im2col_rows(cols[t:t + L], x, r, r + L, OH, OW, KH, KW, SH, SW, PT, PL)
    weight_gemm(dw, cols, colsT, kmajor, dyb, sub_w)  # dw += cols.T @ dy
    if need_dx:
        rows_gemm(cols, dyb, wT, sub_x)  # dcols = dy @ w2.T
        for q in range(runs.shape[0]):
            r, t = runs[q], q * L
            col2im_rows(dx, cols[t:t + L], r, r + L, OH, OW, KH, KW, SH, SW, PT, PL)


@kernel
def start_group(dx, dw_part, db_part, g, n0, n1, need_dx):
    """Zero group ``g``'s partial sums and, when computed, its images' ``dx`` (a backward kernel's start)."""
    zero = dw_part.dtype.type(0)
    dw_part[g] = zero
    if db_part.size:
        db_part[g] = zero
    if need_dx:
        dx[n0:n1] = zero


def finish_backward(dx, dw_part, db_part, x_shape, w_shape, has_bias, need_dx):
    """``(dx, dw, db)`` from a backward kernel's outputs: partial sums added in group order."""
    G = dw_part.shape[0]
    dw = dw_part[0] if G == 1 else dw_part.sum(axis=0)
    db = (db_part[0, 0] if G == 1 else db_part.sum(axis=(0, 1))) if has_bias else None
    return (dx.reshape(x_shape) if need_dx else None), dw.reshape(w_shape), db


def backward_buffers(workspace, G, rows, dy_rows, K, F, has_bias, need_dx, x_shape, dtype):
    """A backward kernel's buffers: per group an im2col block ``(G, rows, K)``, a gradient
    block ``(G, dy_rows, F)`` and partial sums ``dw (G, K, F)``, ``db (G, 1, F)``; the
    ones of the db GEMM ``(1, rows)``; and ``dx (N, H, W*C)`` (empty when not wanted)."""
    N, H, W, C = x_shape
    ws = scratch(workspace, "cols", (G, rows, K), dtype)  # (G, rows, K)
    ws_dy = scratch(workspace, "dy", (G, dy_rows, F), dtype)  # (G, dy_rows, F)
    ones = scratch(workspace, "ones", (1, rows), dtype)  # (1, rows)
    ones.fill(1)
    dw_part = np.empty((G, K, F), dtype=dtype)  # (G, K, F)
    db_part = np.empty((G, 1, F) if has_bias else (G, 0, 0), dtype=dtype)  # (G, 1, F)
    dx = np.empty((N, H, W * C) if need_dx else (0, 0, 0), dtype=dtype)  # (N, H, W*C)
    return ws, ws_dy, ones, dw_part, db_part, dx


def _groups():
    """Work groups per call: fixed per process so results never depend on the thread count."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def _kmajor(KW, C):
    """im2col blocks transposed (``(K, rows)``) when a window row is too short to copy as one run."""
    return KW * C < KMAJOR_BELOW


def _block_rows(K, itemsize, M, G):
    """Rows per im2col block: about BLOCK_BYTES, and no more than a group's share."""
    rows = max(1, BLOCK_BYTES // (K * itemsize))
    return max(1, min(rows, -(-M // G)))


def forward_gemm_rows(K, F, dtype):
    """Rows per call of a block's forward GEMM ``(rows, K) x (K, F)``.

    OpenBLAS's AVX-512 kernels multiply a float32 GEMM of at most
    :data:`fastcnn.kernels._blas.SMALL_GEMM_MNK` multiply-adds without packing
    its operands (:func:`fastcnn.kernels._blas.small_gemm_rows`): a block cut into
    calls that small ran 1.36x faster forward and 1.32x in the weight gradient at
    the vgg_mini conv2 shape (``K=288, F=32``: 108 rows a call). Fewer than
    :data:`MIN_FORWARD_ROWS` rows a call, or more than :data:`FORWARD_CUT_MAX_F`
    filters: a block is one call.
    """
    return _blas.small_gemm_rows(K, F, dtype, MIN_FORWARD_ROWS) if F <= FORWARD_CUT_MAX_F else 1 << 62


def backward_gemm_rows(K, F, dtype):
    """``(weight, input)`` gradient GEMM rows per call: the input gradient's GEMM
    (``dy @ wT``) has the forward's shape class (untransposed operands)."""
    return (_blas.small_gemm_rows(K, F, dtype, MIN_WEIGHT_ROWS),
            _blas.small_gemm_rows(K, F, dtype, MIN_FORWARD_ROWS))


def _forward(x, w, b, stride, padding, workspace, need_cache, relu):
    x = np.ascontiguousarray(x)
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (SH, SW), ((PT, _), (PL, _)) = stride, padding
    OH, OW = output_hw((H, W), (KH, KW), stride, padding)
    K, M, G = KH * KW * C, N * OH * OW, _groups()
    dtype = x.dtype
    w2 = np.ascontiguousarray(w, dtype=dtype).reshape(K, F)  # (KH*KW*C, F)
    bias = np.zeros(0, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,) or (0,)
    block = _block_rows(K, dtype.itemsize, M, G)
    ws = scratch(workspace, "cols", (G, block, K), dtype)  # (G, block, K)
    y = np.empty((M, F), dtype=dtype)  # (N*OH*OW, F)
    x3 = x.reshape(N, H, W * C)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x3, w2, bias, relu, _kmajor(KW, C), ws, block, forward_gemm_rows(K, F, dtype),
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
    M, G, dtype = N * OH * OW, _groups(), x.dtype
    dy2 = np.ascontiguousarray(dy, dtype=dtype).reshape(M, F)  # (N*OH*OW, F)
    y2 = dy2 if y is None else y.reshape(M, F)  # (N*OH*OW, F), read only when relu
    block = _block_rows(K, dtype.itemsize, M, G)
    ws, ws_dy, ones, dw_part, db_part, dx = backward_buffers(workspace, G, block, block if relu else 0, K, F,
                                                             has_bias, need_dx, x.shape, dtype)
    with _blas.blas_single_threaded():
        _backward_kernel(dx, dw_part, db_part, dy2, y2, x.reshape(N, H, W * C), np.ascontiguousarray(w2.T), relu,
                         _kmajor(KW, C), need_dx, ws, ws_dy, ones, block, *backward_gemm_rows(K, F, dtype),
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
