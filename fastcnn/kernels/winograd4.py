"""Winograd F(4x4, 3x3) for 3x3 kernels at stride 1 (variant ``numba:winograd4``).

The same organization as :mod:`fastcnn.kernels.winograd` (F(2x2, 3x3): read its
docstring), with 6x6 input tiles giving 4x4 outputs: 36 multiplications per
input channel and filter for 16 outputs instead of 144, 4x fewer than a direct
or im2col convolution (F(2x2, 3x3): 2.25x). The price is larger transform
constants (interpolation points 0, +-1, +-2), so more rounding: docs/ops.md
has the measured float32 error, within the agreement tolerance. Transforms
(Lavin & Gray, 2015)::

    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
           [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

Registered for ``conv2d`` and ``conv2d_relu`` (forward and input gradient by
Winograd, weight gradient by im2col blocks), and for the ops fused with a max
pool at inference: a 4x4 output tile holds whole 2x2 pool windows, and the
pool's epilogue is F(2x2, 3x3)'s. A fused forward that keeps a cache for a
backward pass runs F(2x2, 3x3) instead: ``G``'s constants (1/6, 1/24) are not
exact in binary, so outputs that are exactly equal (integer data) come out a
rounding apart, and the pool's first-maximum rule would route the gradient to
another window element than the reference (F(2x2, 3x3)'s halves are exact
there). The pooled values themselves are a rounding apart at most: the
inference forward is within the same tolerance as the unpooled one.
"""

import numpy as np
from numba import prange

from fastcnn.kernels import _blas, _blockgemm, conv_pool, winograd
from fastcnn.kernels._jit import inline_kernel, kernel, parallel_kernel
from fastcnn.kernels.winograd import applies, check_domain  # noqa: F401  (the same domain as F(2x2, 3x3))

__all__ = ["applies", "winograd4_conv", "conv2d_maxpool2d_forward", "conv2d_relu_maxpool2d_forward",
           "filter_transform", "block_bytes", "VARIANTS", "BLOCK_BYTES"]

#: Target bytes of one group's transformed tiles (input ``V`` and products ``M``) per block.
BLOCK_BYTES = 512 * 1024

G_MATRIX = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def filter_transform(w, dtype):
    """``U`` ``(36, C, F)``: ``G g G^T`` of every ``(c, f)`` slice of HWIO ``w``, in float64, rounded once."""
    U = np.einsum("ai,ijcf,bj->abcf", G_MATRIX, np.asarray(w, dtype=np.float64), G_MATRIX, optimize=True)
    return np.ascontiguousarray(U.reshape(36, w.shape[2], w.shape[3]), dtype=dtype)


@inline_kernel
def _bt6(o0, o1, o2, o3, o4, o5, a0, a1, a2, a3, a4, a5):
    # One 6-point input transform B^T [a0..a5] along the vectors.
    two, four, five = o0.dtype.type(2), o0.dtype.type(4), o0.dtype.type(5)
    for t in range(o0.shape[0]):
        p, q = a4[t] - a2[t], a3[t] - a1[t]
        r = a4[t] - four * a2[t]
        s = a3[t] - four * a1[t]
        o0[t] = four * a0[t] - five * a2[t] + a4[t]
        o1[t] = r + s
        o2[t] = r - s
        o3[t] = p + two * q
        o4[t] = p - two * q
        o5[t] = four * a1[t] - five * a3[t] + a5[t]


@inline_kernel
def _at6(o0, o1, o2, o3, a0, a1, a2, a3, a4, a5):
    # One 6-to-4-point output transform A^T [a0..a5].
    two, four, eight = o0.dtype.type(2), o0.dtype.type(4), o0.dtype.type(8)
    for t in range(o0.shape[0]):
        p, q = a1[t] + a2[t], a1[t] - a2[t]
        r, s = a3[t] + a4[t], a3[t] - a4[t]
        o0[t] = a0[t] + p + r
        o1[t] = q + two * s
        o2[t] = p + four * r
        o3[t] = q + eight * s + a5[t]


@kernel
def _load_tile(D, x, n, h0, w0):
    # D: (36, C) out, the 6x6 input tile at (h0, w0) of image n, zero outside x: (N, H, W*C).
    _, H, WC = x.shape
    C = D.shape[1]
    W = WC // C
    zero = D.dtype.type(0)
    rows = D.reshape(6, 6 * C)
    for r in range(6):
        h = h0 + r
        dst = rows[r]
        if h < 0 or h >= H:
            for t in range(6 * C):
                dst[t] = zero
        elif w0 >= 0 and w0 + 6 <= W:
            src = x[n, h, w0 * C:(w0 + 6) * C]
            for t in range(6 * C):
                dst[t] = src[t]
        else:
            for s in range(6):
                w = w0 + s
                px = dst[s * C:(s + 1) * C]
                if w < 0 or w >= W:
                    for c in range(C):
                        px[c] = zero
                else:
                    src = x[n, h, w * C:(w + 1) * C]
                    for c in range(C):
                        px[c] = src[c]


@kernel
def _input_transform(V, D, T):
    # V: (36, C) out = B^T d B of the tile D: (36, C); T: (36, C) scratch.
    for s in range(6):
        _bt6(T[s], T[6 + s], T[12 + s], T[18 + s], T[24 + s], T[30 + s],
             D[s], D[6 + s], D[12 + s], D[18 + s], D[24 + s], D[30 + s])
    for r in range(6):
        k = 6 * r
        _bt6(V[k], V[k + 1], V[k + 2], V[k + 3], V[k + 4], V[k + 5],
             T[k], T[k + 1], T[k + 2], T[k + 3], T[k + 4], T[k + 5])


@kernel
def _output_tile(y, Mt, T, b, relu, n, oh0, ow0):
    # y: (N, OH, OW, F) out, the 4x4 outputs at (oh0, ow0) of image n = A^T m A of Mt: (36, F),
    # + b (size 0: none), then max(., 0) when relu; T: (40, F) scratch (rows 0..23, then 24..39).
    _, OH, OW, F = y.shape
    zero = y.dtype.type(0)
    for s in range(6):  # A^T m: rows 0..3 of T (4 x 6)
        _at6(T[s], T[6 + s], T[12 + s], T[18 + s], Mt[s], Mt[6 + s], Mt[12 + s], Mt[18 + s], Mt[24 + s], Mt[30 + s])
    for r in range(4):  # (A^T m) A into T[24 + 4r .. 24 + 4r + 3]
        k, o = 6 * r, 24 + 4 * r
        _at6(T[o], T[o + 1], T[o + 2], T[o + 3], T[k], T[k + 1], T[k + 2], T[k + 3], T[k + 4], T[k + 5])
    for r in range(4):
        oh = oh0 + r
        if oh >= OH:
            continue
        for s in range(4):
            ow = ow0 + s
            if ow >= OW:
                continue
            src, dst = T[24 + 4 * r + s], y[n, oh, ow]
            for f in range(F):
                v = src[f] + b[f] if b.size else src[f]
                dst[f] = zero if (relu and v <= zero) else v


@kernel
def _tiles(y, x, U, b, relu, D, TC, TF, V, M, t0, t1, n_off, TH, TW, PT, PL):
    # Tiles t0..t1 ((n, th, tw) row-major) of the convolution of x: (N, H, W*C) into y: (N', OH, OW, F)
    # at image n - n_off; U: (36, C, F); D, TC: (36, C), TF: (40, F) scratch; V: (>= t1-t0, 36, C),
    # M: (>= t1-t0, 36, F).
    P = TH * TW
    for t in range(t0, t1):
        n, r = t // P, t % P
        _load_tile(D, x, n, 4 * (r // TW) - PT, 4 * (r % TW) - PL)
        _input_transform(V[t - t0], D, TC)
    nt = t1 - t0
    for k in range(36):  # M[:, k] = V[:, k] @ U[k]
        _blas.gemm(False, False, 1.0, V[:nt, k], U[k], 0.0, M[:nt, k])
    for t in range(t0, t1):
        n, r = t // P, t % P
        _output_tile(y, M[t - t0], TF, b, relu, n - n_off, 4 * (r // TW), 4 * (r % TW))


@parallel_kernel
def _forward_kernel(y, x, U, b, relu, D, TC, TF, V, M, TH, TW, PT, PL):
    # y: (N, OH, OW, F) out; x: (N, H, W*C); U: (36, C, F); b: (F,) or size 0; per group g:
    # D[g], TC[g]: (36, C), TF[g]: (40, F), V[g]: (block, 36, C), M[g]: (block, 36, F).
    G, block = V.shape[0], V.shape[1]
    tiles = x.shape[0] * TH * TW
    for g in prange(G):
        lo, hi = g * tiles // G, (g + 1) * tiles // G
        for t0 in range(lo, hi, block):
            _tiles(y, x, U, b, relu, D[g], TC[g], TF[g], V[g], M[g], t0, min(t0 + block, hi), 0, TH, TW, PT, PL)


@parallel_kernel
def _pool_forward_kernel(yp, arg, x, U, b, relu, D, TC, TF, V, M, Y, TH, TW, PT, PL, PH, PW):
    # F(2x2, 3x3)'s kernel with this module's _tiles. (Not one kernel built by a factory, nor one
    # taking _tiles as an argument: Numba's disk cache missed both, so every process recompiled.)
    # Fused with a max pool: groups own whole images; each image's convolution
    # goes to Y[g]: (1, OH, OW, F) (no bias) and is pooled by conv_pool's epilogue (bias and ReLU
    # after the max) into yp, arg: (N*OPH, OPW, F) out.
    G, block = V.shape[0], V.shape[1]
    N = x.shape[0]
    OPH = yp.shape[0] // N
    _, OH, OW, F = Y.shape[1:]
    P = TH * TW
    none = b[:0]
    for g in prange(G):
        for n in range(g * N // G, (g + 1) * N // G):
            for t0 in range(n * P, (n + 1) * P, block):
                _tiles(Y[g], x, U, none, False, D[g], TC[g], TF[g], V[g], M[g], t0, min(t0 + block, (n + 1) * P), n,
                       TH, TW, PT, PL)
            conv_pool._pool_units(yp, arg, Y[g].reshape(OH * OW, F), b, relu, n * OPH, (n + 1) * OPH, OW, PH, PW)


def block_bytes():
    """F(4x4, 3x3)'s block size (see :func:`fastcnn.kernels.winograd.planned_block_bytes`)."""
    return winograd.planned_block_bytes("winograd4_block_bytes", winograd4_conv, filter_transform, BLOCK_BYTES)


def winograd4_conv(x, U, b, OH, OW, PT, PL, relu, workspace=None, prefix="wino4", block=None):
    """As :func:`fastcnn.kernels.winograd.winograd_conv`, with F(4x4, 3x3) and ``U`` ``(36, C, F)``."""
    N, H, W, C = x.shape
    F = U.shape[2]
    G = _blockgemm.groups()
    TH, TW = -(-OH // 4), -(-OW // 4)
    dtype = x.dtype
    size = block_bytes() if block is None else block
    D, TC, TF, V, M = winograd.tile_buffers(workspace, prefix, 36, C, F, 40, -(-(N * TH * TW) // G), dtype, G, size)
    y = np.empty((N, OH, OW, F), dtype=dtype)  # (N, OH, OW, F)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x.reshape(N, H, W * C), U, b, relu, D, TC, TF, V, M, TH, TW, PT, PL)
    return y


def _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu):
    if need_cache:  # a backward pass follows: its window choice must break ties as the reference does
        return winograd._pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu)
    check_domain("numba:winograd4", w, stride, padding)
    x, U, bias = winograd._prepare(x, w, b, filter_transform)
    yp, _, _ = winograd.pooled(_pool_forward_kernel, x, U, bias, padding, pool_size, relu, workspace, tile=4,
                               tf_rows=40, block_bytes=block_bytes(), prefix="wino4", keep_arg=False)
    return yp.reshape(x.shape[0], -1, yp.shape[1], yp.shape[2]), None


def conv2d_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``numba:winograd4`` forward of conv2d_maxpool2d: F(4x4, 3x3) for inference (``need_cache=False``);
    with a cache for the backward pass, ``numba:winograd``'s (F(2x2, 3x3): ties as the reference)."""
    return _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, False)


def conv2d_relu_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``numba:winograd4`` forward of conv2d_relu_maxpool2d (see :func:`conv2d_maxpool2d_forward`)."""
    return _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, True)


#: op -> (forward, backward) of the ``numba:winograd4`` variant.
VARIANTS = {
    **winograd.unpooled_variant("numba:winograd4", winograd4_conv, filter_transform, "wino4"),
    "conv2d_maxpool2d": (conv2d_maxpool2d_forward, conv_pool.conv2d_maxpool2d_backward),
    "conv2d_relu_maxpool2d": (conv2d_relu_maxpool2d_forward, conv_pool.conv2d_relu_maxpool2d_backward),
}
