"""Block GEMMs shared by the im2col convolutions (:mod:`fastcnn.kernels.conv`,
:mod:`fastcnn.kernels.conv_pool`, and the weight gradient of :mod:`fastcnn.kernels.winograd`).

Output rows are split among a fixed number of work groups (one per Numba
thread, :func:`groups`), each walking its rows in cache-sized blocks: im2col
of the block into the group's own buffer, GEMMs called from inside the kernel
(:mod:`fastcnn.kernels._blas`), and in backward the weight gradient into the
group's own partial sum and col2im into ``dx``. This module holds the pieces
every such kernel shares: the block GEMMs, one block's backward, the buffers,
and the sizes (block rows, GEMM rows per call). The block sizes are fixed
constants (not yet planned); whether a float32 GEMM is cut into small calls is
planned per machine (:func:`fastcnn.kernels._blas.small_gemm_mnk`).
"""

import numba
import numpy as np

from fastcnn.kernels import _blas
from fastcnn.kernels._im2col import col2im_rows, im2col_rows, im2col_rows_kmajor, scratch
from fastcnn.kernels._jit import kernel

__all__ = ["BLOCK_BYTES", "MIN_FORWARD_ROWS", "MIN_WEIGHT_ROWS", "FORWARD_CUT_MAX_F", "KMAJOR_BELOW", "rows_gemm",
           "forward_gemm", "weight_gemm", "block_backward", "start_group", "finish_backward", "backward_buffers",
           "groups", "kmajor", "block_rows", "forward_gemm_rows", "backward_gemm_rows"]

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


def groups():
    """Work groups per call: fixed per process so results never depend on the thread count."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def kmajor(KW, C):
    """im2col blocks transposed (``(K, rows)``) when a window row is too short to copy as one run."""
    return KW * C < KMAJOR_BELOW


def block_rows(K, itemsize, M, G):
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
