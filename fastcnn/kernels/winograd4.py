"""Winograd F(4x4, 3x3) for 3x3 kernels at stride 1 (variant ``numba:winograd4``).

6x6 input tiles give 4x4 outputs: 36 multiplications per input channel and
filter for 16 outputs instead of 144, 4x fewer than a direct or im2col
convolution (F(2x2, 3x3), :mod:`fastcnn.kernels.winograd`: 2.25x).

Layout: tiles innermost. Each thread's group of tiles goes in blocks of about
:func:`block_bytes`; a block's input tiles are gathered into ``D`` ``(36, tiles,
C)`` (position, tile, channel), so each step of the input transform runs along
``tiles * C`` values at once, each of the 36 products is one GEMM of contiguous
operands ``(tiles, C) @ (C, F)``, and the output transform runs along ``tiles *
F``. (F(2x2, 3x3) keeps each tile's positions together and transforms one tile
at a time, along ``C`` values: at C = 32 the loop set-up cost as much as the
arithmetic, and at vgg_mini's pooled layers this layout ran 1.2-1.5x faster.)
Fused with a max pool whose windows divide the 4x4 tiles (2x2, the presets'),
the pool reads the block's outputs where they are, and no convolution output is
written at all. The price is larger transform
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
pool at inference (other pool sizes: the convolution, then the pool). A fused forward that keeps a cache for a
backward pass runs F(2x2, 3x3) instead: ``G``'s constants (1/6, 1/24) are not
exact in binary, so outputs that are exactly equal (integer data) come out a
rounding apart, and the pool's first-maximum rule would route the gradient to
another window element than the reference (F(2x2, 3x3)'s halves are exact
there). The pooled values themselves are a rounding apart at most: the
inference forward is within the same tolerance as the unpooled one.
"""

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels import _blas, _blockgemm, conv_pool, pooling, winograd
from fastcnn.kernels._im2col import scratch
from fastcnn.kernels._jit import inline_kernel, kernel, parallel_kernel
from fastcnn.kernels.winograd import applies, check_domain  # noqa: F401  (the same domain as F(2x2, 3x3))

__all__ = ["applies", "winograd4_conv", "conv2d_maxpool2d_forward", "conv2d_relu_maxpool2d_forward",
           "filter_transform", "block_bytes", "VARIANTS", "BLOCK_BYTES"]

#: Target bytes of one group's block buffers (``D``, ``T``, ``M``, ``O``) when not planned.
BLOCK_BYTES = 512 * 1024

G_MATRIX = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def filter_transform(w, dtype):
    """``U`` ``(36, C, F)``: ``G g G^T`` of every ``(c, f)`` slice of HWIO ``w``, in float64, rounded once
    (:func:`fastcnn.kernels.winograd.transform_filters`)."""
    return winograd.transform_filters(w, G_MATRIX, dtype)


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
def _load_tiles(D, x, t0, t1, TH, TW, PT, PL):
    # D: (36, cap, C) out: the 6x6 input tile of tile t (t0..t1, (n, th, tw) row-major) at
    # D[:, t - t0], position 6*r + s at row 6*r + s; zero outside x: (N, H, W*C).
    _, H, WC = x.shape
    C = D.shape[2]
    W = WC // C
    zero = D.dtype.type(0)
    P = TH * TW
    for t in range(t0, t1):
        n, r = t // P, t % P
        h0, w0 = 4 * (r // TW) - PT, 4 * (r % TW) - PL
        j = t - t0
        for rr in range(6):
            h = h0 + rr
            for s in range(6):
                w = w0 + s
                dst = D[6 * rr + s, j]  # (C,)
                if h < 0 or h >= H or w < 0 or w >= W:
                    for c in range(C):
                        dst[c] = zero
                else:
                    src = x[n, h, w * C:(w + 1) * C]
                    for c in range(C):
                        dst[c] = src[c]


@kernel
def _transform_block(D, T, U, M, O, nt):
    # The first nt tiles of a block: D: (36, cap, C) input tiles in, V = B^T d B out (through
    # T, the same shape); M: (36, cap, F) out, M[k] = V[k] @ U[k]; O: (40, cap, F) out, rows
    # 24 + 4*r + s the outputs A^T m A at (r, s) of the 4x4 tile (rows 0..23: A^T m).
    # Tiles innermost: each transform step runs along nt*C (or nt*F) values at once, and
    # each product is one GEMM of contiguous operands.
    cap, C = D.shape[1], D.shape[2]
    F = M.shape[2]
    L, LF = nt * C, nt * F
    Dv, Tv = D.reshape(36, cap * C), T.reshape(36, cap * C)
    Mv, Ov = M.reshape(36, cap * F), O.reshape(40, cap * F)
    for s in range(6):  # B^T d: rows of T
        _bt6(Tv[s, :L], Tv[6 + s, :L], Tv[12 + s, :L], Tv[18 + s, :L], Tv[24 + s, :L], Tv[30 + s, :L],
             Dv[s, :L], Dv[6 + s, :L], Dv[12 + s, :L], Dv[18 + s, :L], Dv[24 + s, :L], Dv[30 + s, :L])
    for r in range(6):  # (B^T d) B: back into D
        k = 6 * r
        _bt6(Dv[k, :L], Dv[k + 1, :L], Dv[k + 2, :L], Dv[k + 3, :L], Dv[k + 4, :L], Dv[k + 5, :L],
             Tv[k, :L], Tv[k + 1, :L], Tv[k + 2, :L], Tv[k + 3, :L], Tv[k + 4, :L], Tv[k + 5, :L])
    for k in range(36):
        _blas.gemm(False, False, 1.0, D[k, :nt], U[k], 0.0, M[k, :nt])
    for s in range(6):  # A^T m: rows 0..23 of O (4 x 6)
        _at6(Ov[s, :LF], Ov[6 + s, :LF], Ov[12 + s, :LF], Ov[18 + s, :LF],
             Mv[s, :LF], Mv[6 + s, :LF], Mv[12 + s, :LF], Mv[18 + s, :LF], Mv[24 + s, :LF], Mv[30 + s, :LF])
    for r in range(4):  # (A^T m) A: rows 24..39
        k, o = 6 * r, 24 + 4 * r
        _at6(Ov[o, :LF], Ov[o + 1, :LF], Ov[o + 2, :LF], Ov[o + 3, :LF],
             Ov[k, :LF], Ov[k + 1, :LF], Ov[k + 2, :LF], Ov[k + 3, :LF], Ov[k + 4, :LF], Ov[k + 5, :LF])


@kernel
def _store_tiles(y, O, b, relu, t0, t1, TH, TW):
    # y: (N, OH, OW, F) out: the 4x4 outputs of tiles t0..t1 (O rows 24..39, tile t at column
    # t - t0) + b (size 0: none), then max(., 0) when relu (NaN passes); rows and columns past
    # OH, OW are not stored.
    _, OH, OW, F = y.shape
    P = TH * TW
    zero = y.dtype.type(0)
    for t in range(t0, t1):
        n, r = t // P, t % P
        oh0, ow0 = 4 * (r // TW), 4 * (r % TW)
        j = t - t0
        for rr in range(4):
            oh = oh0 + rr
            if oh >= OH:
                continue
            for s in range(4):
                ow = ow0 + s
                if ow >= OW:
                    continue
                src, dst = O[24 + 4 * rr + s, j], y[n, oh, ow]
                for f in range(F):
                    v = src[f] + b[f] if b.size else src[f]
                    dst[f] = zero if (relu and v <= zero) else v


@kernel
def _pool_tiles(yp, O, b, relu, t0, t1, TH, TW, PH, PW):
    # yp: (N, OPH, OPW, F) out: the PH x PW max pools (PH, PW dividing 4: every window inside
    # one tile) of tiles t0..t1's 4x4 outputs (O rows 24..39), + b, then ReLU when relu. The
    # first maximum wins and a NaN wins once, as in max_pool2d; bias and ReLU after the max.
    _, OPH, OPW, F = yp.shape
    P = TH * TW
    zero = yp.dtype.type(0)
    for t in range(t0, t1):
        n, r = t // P, t % P
        j = t - t0
        for i in range(4 // PH):
            p = (4 // PH) * (r // TW) + i
            if p >= OPH:
                continue
            for k in range(4 // PW):
                q = (4 // PW) * (r % TW) + k
                if q >= OPW:
                    continue
                best = yp[n, p, q]  # (F,)
                first = O[24 + 4 * PH * i + PW * k, j]
                for f in range(F):
                    best[f] = first[f]
                for a in range(PH):
                    for c in range(PW):
                        if a == 0 and c == 0:
                            continue
                        v = O[24 + 4 * (PH * i + a) + PW * k + c, j]
                        for f in range(F):
                            m = best[f]
                            best[f] = v[f] if (v[f] > m) | ((v[f] != v[f]) & (m == m)) else m
                for f in range(F):
                    v = best[f] + b[f] if b.size else best[f]
                    best[f] = zero if (relu and v <= zero) else v


@parallel_kernel
def _forward_kernel(y, x, U, b, relu, D, T, M, O, TH, TW, PT, PL):
    # y: (N, OH, OW, F) out; x: (N, H, W*C); U: (36, C, F); b: (F,) or size 0; per group g,
    # blocks of cap tiles: D[g], T[g]: (36, cap, C), M[g]: (36, cap, F), O[g]: (40, cap, F).
    G, cap = D.shape[0], D.shape[2]
    tiles = x.shape[0] * TH * TW
    for g in prange(G):
        lo, hi = g * tiles // G, (g + 1) * tiles // G
        for t0 in range(lo, hi, cap):
            t1 = min(t0 + cap, hi)
            _load_tiles(D[g], x, t0, t1, TH, TW, PT, PL)
            _transform_block(D[g], T[g], U, M[g], O[g], t1 - t0)
            _store_tiles(y, O[g], b, relu, t0, t1, TH, TW)


@parallel_kernel
def _pool_forward_kernel(yp, x, U, b, relu, D, T, M, O, TH, TW, PT, PL, PH, PW):
    # As _forward_kernel, each block's outputs max pooled (PH x PW, dividing the 4x4 tiles)
    # into yp: (N, OPH, OPW, F) with bias and ReLU after the max (_pool_tiles): no
    # convolution output is written.
    G, cap = D.shape[0], D.shape[2]
    tiles = x.shape[0] * TH * TW
    for g in prange(G):
        lo, hi = g * tiles // G, (g + 1) * tiles // G
        for t0 in range(lo, hi, cap):
            t1 = min(t0 + cap, hi)
            _load_tiles(D[g], x, t0, t1, TH, TW, PT, PL)
            _transform_block(D[g], T[g], U, M[g], O[g], t1 - t0)
            _pool_tiles(yp, O[g], b, relu, t0, t1, TH, TW, PH, PW)


def block_bytes():
    """F(4x4, 3x3)'s block size (see :func:`fastcnn.kernels.winograd.planned_block_bytes`)."""
    return winograd.planned_block_bytes("winograd4_block_bytes", winograd4_conv, filter_transform, BLOCK_BYTES)


def _buffers(workspace, prefix, x, F, TH, TW, size):
    """Per-group scratch for blocks of about ``size`` bytes of the convolution of ``x`` (N, H, W,
    C) in ``TH`` x ``TW`` tiles an image: ``D``, ``T`` ``(G, 36, cap, C)``, ``M`` ``(G, 36, cap,
    F)``, ``O`` ``(G, 40, cap, F)``, ``cap`` tiles a block (at most a group's share)."""
    N, C, dtype = x.shape[0], x.shape[3], x.dtype
    G = _blockgemm.groups()
    cap = max(1, min(size // ((72 * C + 76 * F) * dtype.itemsize), -(-(N * TH * TW) // G)))
    return (scratch(workspace, prefix + "D", (G, 36, cap, C), dtype),
            scratch(workspace, prefix + "T", (G, 36, cap, C), dtype),
            scratch(workspace, prefix + "M", (G, 36, cap, F), dtype),
            scratch(workspace, prefix + "O", (G, 40, cap, F), dtype))


def winograd4_conv(x, U, b, OH, OW, PT, PL, relu, workspace=None, prefix="wino4", block=None):
    """As :func:`fastcnn.kernels.winograd.winograd_conv`, with F(4x4, 3x3) and ``U`` ``(36, C, F)``."""
    N, H, W, C = x.shape
    F = U.shape[2]
    TH, TW = -(-OH // 4), -(-OW // 4)
    size = block_bytes() if block is None else block
    D, T, M, O = _buffers(workspace, prefix, x, F, TH, TW, size)
    y = np.empty((N, OH, OW, F), dtype=x.dtype)  # (N, OH, OW, F)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x.reshape(N, H, W * C), U, b, relu, D, T, M, O, TH, TW, PT, PL)
    return y


def _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu):
    if need_cache:  # a backward pass follows: its window choice must break ties as the reference does
        return winograd._pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu)
    check_domain("numba:winograd4", w, stride, padding)
    x, U, bias = winograd._prepare(x, w, b, filter_transform)
    N, H, W, C = x.shape
    PH, PW = pool_size
    (PT, _), (PL, _) = padding
    OH, OW = output_hw((H, W), (3, 3), (1, 1), padding)
    if 4 % PH or 4 % PW:  # windows across tiles: the convolution (bias, ReLU), then the pool
        y = winograd4_conv(x, U, bias, OH, OW, PT, PL, relu, workspace)
        return pooling.max_pool2d_forward(y, pool_size=pool_size, stride=pool_size, padding=((0, 0), (0, 0)))[0], None
    F = U.shape[2]
    TH, TW = -(-OH // 4), -(-OW // 4)
    D, T, M, O = _buffers(workspace, "wino4", x, F, TH, TW, block_bytes())
    yp = np.empty((N, OH // PH, OW // PW, F), dtype=x.dtype)  # (N, OPH, OPW, F)
    with _blas.blas_single_threaded():
        _pool_forward_kernel(yp, x.reshape(N, H, W * C), U, bias, relu, D, T, M, O, TH, TW, PT, PL, PH, PW)
    return yp, None


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
