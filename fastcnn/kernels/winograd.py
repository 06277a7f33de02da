"""Winograd F(2x2, 3x3) convolution for 3x3 kernels at stride 1 (variant ``numba:winograd``).

A 2x2 block of outputs of a 3x3 correlation is computed from the 4x4 input tile
``d`` that covers it as ``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray,
2015): 16 multiplications per input channel and filter instead of 36, 2.25x
fewer. Organized as NNPACK and ncnn do it on CPUs:

1. filter transform ``U[k] = (G g G^T)[k]`` for the 16 positions ``k`` of a 4x4
   tile, once per call (in float64, rounded once to the input dtype);
2. per block of tiles sized to stay in cache (:data:`BLOCK_BYTES`), the input
   transform ``V[t, k] = (B^T d_t B)[k]`` of each tile ``t``, vectorized along
   the channels (NHWC: a tile's 16 pixels are 16 runs of ``C`` values);
3. 16 GEMMs per block, ``M[:, k] = V[:, k] @ U[k]``, ``(tiles, C) x (C, F)``,
   BLAS from inside the kernel on one thread (:mod:`fastcnn.kernels._blas`);
4. the output transform ``A^T M_t A`` of each tile, with the bias and ReLU
   applied as it is written (or, fused with a max pool, the image's output
   pooled by :mod:`fastcnn.kernels.conv_pool`'s epilogue while in cache).

Work is split among a fixed number of groups (``NUMBA_NUM_THREADS``, as in
:mod:`fastcnn.kernels.conv`), each with its own preallocated buffers: nothing
is allocated inside the parallel loop, and results do not depend on the thread
count.

Gradients: the input gradient is itself a 3x3 stride-1 correlation, of ``dy``
(masked by ``y > 0`` under ReLU) padded by ``2 - p`` on each side with the
weights flipped and transposed (``w[2-i, 2-j, c, f]`` as ``(3, 3, F, C)``), and
runs through the same Winograd kernel. The weight and bias gradients use the
im2col blocks of :mod:`fastcnn.kernels.conv`. Fused with a max pool, the
backward is :mod:`fastcnn.kernels.conv_pool`'s (im2col).

Error: the transforms add and subtract (``G`` halves), so the rounding is a
few more operations per output than a direct sum; measured over the agreement
grid it stays below the float32 and float64 tolerances (docs/ops.md has the figures).
"""

import time

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.kernels import _blas, _blockgemm, conv, conv_pool
from fastcnn.kernels._im2col import scratch
from fastcnn.kernels._jit import inline_kernel, kernel, ordered_kernel, parallel_kernel

__all__ = ["applies", "check_domain", "unpooled_variant", "winograd_conv",
           "conv2d_maxpool2d_forward", "conv2d_relu_maxpool2d_forward", "filter_transform", "transform_filters",
           "VARIANTS", "BLOCK_BYTES", "BLOCK_CANDIDATES", "planned_block_bytes", "block_bytes"]

#: Target bytes of one group's transformed tiles (input ``V`` and products ``M``) per block,
#: outside ``FASTCNN_PLAN=measure`` (there: :func:`planned_block_bytes`).
BLOCK_BYTES = 512 * 1024

#: The block sizes the planner times for a Winograd kernel (``FASTCNN_PLAN=measure``).
BLOCK_CANDIDATES = (256 << 10, 512 << 10, 1 << 20, 2 << 20)

_PLANNED_BLOCKS = {}  # tuning name -> bytes, this process


def planned_block_bytes(name, conv_fn, transform, default):
    """The block size of a Winograd kernel: ``default`` (the module's ``BLOCK_BYTES``) unless
    ``FASTCNN_PLAN=measure``; then the fastest of :data:`BLOCK_CANDIDATES` on this machine,
    measured once and kept in the plan file as ``"tuning <name>"`` (:func:`fastcnn.planner.tuned`).
    Larger blocks mean fewer, taller GEMMs, smaller ones that the block stays in a faster cache:
    where that balance lies depends on the caches and the BLAS, so it is measured where it runs."""
    from fastcnn import planner

    if planner.plan_mode() != "measure":
        return default
    value = _PLANNED_BLOCKS.get(name)
    if value is None:
        value = _PLANNED_BLOCKS[name] = int(planner.tuned(name, lambda: _measure_blocks(conv_fn, transform),
                                                          lambda: default))
    return value


def _measure_blocks(conv_fn, transform, min_rounds=None, min_span=None):
    """``(bytes, {bytes: seconds})``: a probe convolution (64 images 14x14x32 -> 64, 3x3 'same',
    no cache) under each candidate block size, in interleaved rounds as the planner times
    variants (by default its :data:`~fastcnn.planner.REPEATS` rounds over at least
    :data:`~fastcnn.planner.MIN_SPAN_SECONDS`); each candidate's minimum counts."""
    from fastcnn import planner

    rng = np.random.default_rng(0)
    x = rng.random((64, 14, 14, 32), dtype=np.float32)  # (N, H, W, C)
    U = transform(rng.standard_normal((3, 3, 32, 64), dtype=np.float32), np.float32)  # (positions, C, F)
    none = np.zeros(0, np.float32)
    spaces = {c: {} for c in BLOCK_CANDIDATES}  # each candidate's own reused buffers

    def run(c):
        conv_fn(x, U, none, 14, 14, 1, 1, True, spaces[c], block=c)

    def timed(c):
        start = time.perf_counter()
        run(c)
        return time.perf_counter() - start

    for c in BLOCK_CANDIDATES:
        run(c)
    best = planner.rounds_minimum(BLOCK_CANDIDATES, timed,
                                  min_rounds=planner.REPEATS if min_rounds is None else min_rounds,
                                  min_span=planner.MIN_SPAN_SECONDS if min_span is None else min_span)
    fastest = min(BLOCK_CANDIDATES, key=lambda c: (best[c], c))
    return fastest, {str(c): t for c, t in best.items()}


def block_bytes():
    """F(2x2, 3x3)'s block size (see :func:`planned_block_bytes`)."""
    return planned_block_bytes("winograd_block_bytes", winograd_conv, filter_transform, BLOCK_BYTES)

#: The filter transform ``G`` (4x3) of F(2x2, 3x3).
G_MATRIX = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def applies(geometry):
    """3x3 kernels at stride 1 with at most 2 padding on any side (the input gradient pads by ``2 - p``)."""
    return (tuple(geometry.w_shape[:2]) == (3, 3) and geometry.stride == (1, 1)
            and all(0 <= p <= 2 for side in geometry.padding for p in side))


def check_domain(variant, w, stride, padding):
    """Raise ``ValueError`` outside :func:`applies` (a variant called directly, bypassing the
    planner and the layers' checks, would otherwise read outside its buffers)."""
    if not (tuple(w.shape[:2]) == (3, 3) and tuple(stride) == (1, 1)
            and all(0 <= p <= 2 for side in padding for p in side)):
        raise ValueError(f"{variant} applies to 3x3 kernels at stride 1 with padding at most 2; received kernel "
                         f"{tuple(w.shape[:2])}, stride {tuple(stride)}, padding {tuple(padding)} "
                         f"(fastcnn.registry.applicable lists the variants that do)")


@kernel
def _transform_kernel(U, w, G):
    # U: (a*a, C*F) out, U[a*r + s] = sum_j G[s, j] T[r, j] with T[r, j] = sum_i G[r, i] w[3*i + j]
    # in float64, rounded once; w: (9, C*F), row 3*i + j the tap (i, j) of every (c, f); G: (a, 3)
    # float64. Along C*F in chunks whose T (a, 3, chunk) stays in L1: every loop is a stream of
    # FMAs (one pass of nine products per output was 3x slower).
    a = G.shape[0]
    L = w.shape[1]
    B = 512
    T = np.empty((a, 3, B))
    for q0 in range(0, L, B):
        n = min(B, L - q0)
        for r in range(a):
            g0, g1, g2 = G[r, 0], G[r, 1], G[r, 2]
            for j in range(3):
                t = T[r, j]
                x0, x1, x2 = w[j, q0:q0 + n], w[3 + j, q0:q0 + n], w[6 + j, q0:q0 + n]
                for q in range(n):
                    t[q] = g0 * np.float64(x0[q]) + g1 * np.float64(x1[q]) + g2 * np.float64(x2[q])
        for r in range(a):
            t0, t1, t2 = T[r, 0], T[r, 1], T[r, 2]
            for s in range(a):
                h0, h1, h2 = G[s, 0], G[s, 1], G[s, 2]
                out = U[a * r + s, q0:q0 + n]
                for q in range(n):
                    out[q] = h0 * t0[q] + h1 * t1[q] + h2 * t2[q]


def transform_filters(w, G, dtype):
    """``U`` ``(a * a, C, F)``: ``G g G^T`` of every ``(c, f)`` slice ``g`` of HWIO ``w`` ``(3, 3,
    C, F)``, for the ``(a, 3)`` filter matrix ``G``; computed in float64 and rounded once to
    ``dtype``. Position ``a * r + s`` holds row ``r`` (``G`` along the kernel's rows) and column ``s``.

    It runs at every call (the weights change at every training step), so it is a kernel
    that writes ``U`` in ``dtype`` directly, with no float64 array allocated per call
    (``np.einsum(..., optimize=True)`` and two NumPy matrix products computed the same
    numbers several times slower; the measurements are in README.md, "Performance").
    ``G`` is one of the modules' float64 ``G_MATRIX``.
    """
    _, _, C, F = w.shape
    a = G.shape[0]
    U = np.empty((a * a, C, F), dtype=dtype)
    _transform_kernel(U.reshape(a * a, C * F), np.ascontiguousarray(w).reshape(9, C * F), G)
    return U


def filter_transform(w, dtype):
    """``U`` ``(16, C, F)``: ``G g G^T`` of every ``(c, f)`` slice of HWIO ``w`` ``(3, 3, C, F)``,
    computed in float64 and rounded once to ``dtype`` (:func:`transform_filters`)."""
    return transform_filters(w, G_MATRIX, dtype)


@inline_kernel
def _bt(o0, o1, o2, o3, a, b, c, d):
    # One 4-point input transform B^T [a b c d] along the vectors (vectorized over their length).
    for t in range(o0.shape[0]):
        o0[t] = a[t] - c[t]
        o1[t] = b[t] + c[t]
        o2[t] = c[t] - b[t]
        o3[t] = b[t] - d[t]


@inline_kernel
def _at(o0, o1, a, b, c, d):
    # One 4-point output transform A^T [a b c d].
    for t in range(o0.shape[0]):
        o0[t] = a[t] + b[t] + c[t]
        o1[t] = b[t] - c[t] - d[t]


@kernel
def _load_tile(D, x, n, h0, w0):
    # D: (16, C) out, the 4x4 input tile at (h0, w0) of image n, zero outside x: (N, H, W*C).
    _, H, WC = x.shape
    C = D.shape[1]
    W = WC // C
    zero = D.dtype.type(0)
    rows = D.reshape(4, 4 * C)  # (4, 4*C): tile row r is 4 pixels of C values
    for r in range(4):
        h = h0 + r
        dst = rows[r]
        if h < 0 or h >= H:
            for t in range(4 * C):
                dst[t] = zero
        elif w0 >= 0 and w0 + 4 <= W:
            src = x[n, h, w0 * C:(w0 + 4) * C]  # (4*C,)
            for t in range(4 * C):
                dst[t] = src[t]
        else:  # the tile hangs over the left or right edge
            for s in range(4):
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
    # V: (16, C) out = B^T d B of the tile D: (16, C) (row-major 4x4 positions); T: (16, C) scratch.
    for s in range(4):  # B^T d: combine tile rows, column s
        _bt(T[s], T[4 + s], T[8 + s], T[12 + s], D[s], D[4 + s], D[8 + s], D[12 + s])
    for r in range(4):  # (B^T d) B: combine columns, row r
        _bt(V[4 * r], V[4 * r + 1], V[4 * r + 2], V[4 * r + 3], T[4 * r], T[4 * r + 1], T[4 * r + 2], T[4 * r + 3])


#: B^T's rows as ``(first tile row, its sign, second tile row, its sign)``: row i of ``B^T d``
#: is ``sign * d[first] + sign * d[second]`` (B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
#: [0, 1, 0, -1]]); the same pairs combine the columns of ``B^T d`` for ``(B^T d) B``.
_BT_PAIRS = ((0, 1.0, 2, -1.0), (1, 1.0, 2, 1.0), (2, 1.0, 1, -1.0), (1, 1.0, 3, -1.0))


@ordered_kernel
def _input_tile_interior(Vt, x, n, h0, w0):
    # Vt: (16, C) out = B^T d B of the 4x4 tile at (h0, w0) of image n, which lies wholly inside
    # x: (N, H, W*C). Each of the 16 outputs is one pass over the channels reading four input
    # runs and writing one (few enough pointers for LLVM to vectorize it), with the additions
    # of _load_tile + _input_transform in the same order: bit-identical results (no reassociation;
    # the signs are exact).
    C = Vt.shape[1]
    for i in range(4):
        ra, sa, rb, sb = _BT_PAIRS[i]
        xa, xb = x[n, h0 + ra], x[n, h0 + rb]  # (W*C,) each
        for j in range(4):
            ca, ta, cb, tb = _BT_PAIRS[j]
            pa, pb = xa[(w0 + ca) * C:(w0 + ca + 1) * C], xb[(w0 + ca) * C:(w0 + ca + 1) * C]
            qa, qb = xa[(w0 + cb) * C:(w0 + cb + 1) * C], xb[(w0 + cb) * C:(w0 + cb + 1) * C]
            dst = Vt[4 * i + j]
            s1, s2, t1, t2 = pa.dtype.type(sa), pa.dtype.type(sb), pa.dtype.type(ta), pa.dtype.type(tb)
            for c in range(C):
                dst[c] = t1 * (s1 * pa[c] + s2 * pb[c]) + t2 * (s1 * qa[c] + s2 * qb[c])


@kernel
def _output_tile(y, Mt, T, b, relu, n, oh0, ow0):
    # y: (N, OH, OW, F) out, the 2x2 outputs at (oh0, ow0) of image n = A^T m A of Mt: (16, F),
    # + b (size 0: none), then max(., 0) when relu (NaN passes); T: (16, F) scratch, rows 0..11 used.
    _, OH, OW, F = y.shape
    zero = y.dtype.type(0)
    for s in range(4):  # A^T m: rows 0..1 of T, column s
        _at(T[s], T[4 + s], Mt[s], Mt[4 + s], Mt[8 + s], Mt[12 + s])
    for r in range(2):  # (A^T m) A into T[8 + 2r], T[9 + 2r]
        _at(T[8 + 2 * r], T[9 + 2 * r], T[4 * r], T[4 * r + 1], T[4 * r + 2], T[4 * r + 3])
    for r in range(2):
        oh = oh0 + r
        if oh >= OH:
            continue
        for s in range(2):
            ow = ow0 + s
            if ow >= OW:
                continue
            src, dst = T[8 + 2 * r + s], y[n, oh, ow]  # (F,) each
            for f in range(F):
                v = src[f] + b[f] if b.size else src[f]
                dst[f] = zero if (relu and v <= zero) else v


@kernel
def _tiles(y, x, U, b, relu, D, TC, TF, V, M, t0, t1, n_off, TH, TW, PT, PL):
    # Tiles t0..t1 (numbered (n, th, tw) row-major over the batch) of the convolution of
    # x: (N, H, W*C) into y: (N', OH, OW, F) at image n - n_off; U: (16, C, F);
    # D, TC: (16, C) and TF: (16, F) scratch; V: (>= t1-t0, 16, C), M: (>= t1-t0, 16, F).
    P = TH * TW
    _, H, WC = x.shape
    W = WC // D.shape[1]
    for t in range(t0, t1):  # input transforms
        n, r = t // P, t % P
        h0, w0 = 2 * (r // TW) - PT, 2 * (r % TW) - PL
        if h0 >= 0 and w0 >= 0 and h0 + 4 <= H and w0 + 4 <= W:
            _input_tile_interior(V[t - t0], x, n, h0, w0)
        else:  # a tile over the padding
            _load_tile(D, x, n, h0, w0)
            _input_transform(V[t - t0], D, TC)
    nt = t1 - t0
    for k in range(16):  # M[:, k] = V[:, k] @ U[k]: (nt, C) x (C, F), rows strided by 16*C
        _blas.gemm(False, False, 1.0, V[:nt, k], U[k], 0.0, M[:nt, k])
    for t in range(t0, t1):  # output transforms
        n, r = t // P, t % P
        _output_tile(y, M[t - t0], TF, b, relu, n - n_off, 2 * (r // TW), 2 * (r % TW))


@parallel_kernel
def _forward_kernel(y, x, U, b, relu, D, TC, TF, V, M, TH, TW, PT, PL):
    # y: (N, OH, OW, F) out; x: (N, H, W*C); U: (16, C, F); b: (F,) or size 0; per group g:
    # D[g], TC[g]: (16, C), TF[g]: (16, F), V[g]: (block, 16, C), M[g]: (block, 16, F).
    G, block = V.shape[0], V.shape[1]
    tiles = x.shape[0] * TH * TW
    for g in prange(G):
        lo, hi = g * tiles // G, (g + 1) * tiles // G  # this group's tiles: disjoint outputs
        for t0 in range(lo, hi, block):
            _tiles(y, x, U, b, relu, D[g], TC[g], TF[g], V[g], M[g], t0, min(t0 + block, hi), 0, TH, TW, PT, PL)


@parallel_kernel
def _pool_forward_kernel(yp, arg, x, U, b, relu, D, TC, TF, V, M, Y, TH, TW, PT, PL, PH, PW):
    # Fused with a max pool: groups own whole images; each image's convolution goes to
    # Y[g]: (1, OH, OW, F) (no bias) and is pooled by conv_pool's epilogue (bias and ReLU
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


def _tile_buffers(workspace, prefix, C, F, tiles_per_group, dtype, G, block_bytes):
    """Per-group scratch: ``D``, ``TC`` ``(G, 16, C)`` (one input tile and its transform's
    scratch), ``TF`` ``(G, 16, F)`` (the output transform's), and per block of tiles (about
    ``block_bytes``) ``V`` ``(G, block, 16, C)`` and ``M`` ``(G, block, 16, F)`` (transformed
    tiles and their products)."""
    block = max(1, min(block_bytes // (16 * (C + F) * dtype.itemsize), tiles_per_group))
    D = scratch(workspace, prefix + "D", (G, 16, C), dtype)
    TC = scratch(workspace, prefix + "TC", (G, 16, C), dtype)
    TF = scratch(workspace, prefix + "TF", (G, 16, F), dtype)
    V = scratch(workspace, prefix + "V", (G, block, 16, C), dtype)
    M = scratch(workspace, prefix + "M", (G, block, 16, F), dtype)
    return D, TC, TF, V, M


def _pooled(x, U, bias, padding, pool_size, relu, workspace, keep_arg):
    """``(yp (N*OPH, OPW, F), arg, (OH, OW))``: the 3x3 stride-1 convolution of contiguous NHWC
    ``x`` whose filter transform is ``U`` ``(16, C, F)``, max pooled (``arg``: each window's
    argmax, a new array when ``keep_arg`` (a backward pass reads it), else the workspace's
    scratch)."""
    N, H, W, C = x.shape
    F = U.shape[2]
    PH, PW = pool_size
    OH, OW = output_hw((H, W), (3, 3), (1, 1), padding)
    (PT, _), (PL, _) = padding
    dtype, G = x.dtype, _blockgemm.groups()
    TH, TW = -(-OH // 2), -(-OW // 2)
    D, TC, TF, V, M = _tile_buffers(workspace, "wino", C, F, TH * TW, dtype, G, block_bytes())
    Y = scratch(workspace, "winoY", (G, 1, OH, OW, F), dtype)  # (G, 1, OH, OW, F) one image's convolution
    yp = np.empty((N * (OH // PH), OW // PW, F), dtype=dtype)  # (N*OPH, OPW, F)
    index = conv_pool._index_dtype(PH * PW)
    arg = np.empty(yp.shape, dtype=index) if keep_arg else scratch(workspace, "winoarg", yp.shape, index)
    with _blas.blas_single_threaded():
        _pool_forward_kernel(yp, arg, x.reshape(N, H, W * C), U, bias, relu, D, TC, TF, V, M, Y, TH, TW, PT, PL,
                             PH, PW)
    return yp, arg, (OH, OW)


def winograd_conv(x, U, b, OH, OW, PT, PL, relu, workspace=None, prefix="wino", block=None):
    """``y`` ``(N, OH, OW, F)``: the 3x3 stride-1 correlation of NHWC ``x`` whose filter transform is
    ``U`` ``(16, C, F)``, with ``PT`` rows and ``PL`` columns of zeros before the image (and as
    many after it as ``OH``, ``OW`` need), plus ``b`` ((F,) or size 0), ReLU'd when ``relu``;
    blocks of about ``block`` bytes (default: :func:`block_bytes`)."""
    N, H, W, C = x.shape
    F = U.shape[2]
    G = _blockgemm.groups()
    TH, TW = -(-OH // 2), -(-OW // 2)
    size = block_bytes() if block is None else block
    D, TC, TF, V, M = _tile_buffers(workspace, prefix, C, F, -(-(N * TH * TW) // G), x.dtype, G, size)
    y = np.empty((N, OH, OW, F), dtype=x.dtype)  # (N, OH, OW, F)
    with _blas.blas_single_threaded():
        _forward_kernel(y, x.reshape(N, H, W * C), U, b, relu, D, TC, TF, V, M, TH, TW, PT, PL)
    return y


def _prepare(x, w, b, transform=filter_transform):
    """Contiguous ``x``, the filter transform ``U`` of ``w`` in ``x``'s dtype, and the bias ((F,) or (0,))."""
    x = np.ascontiguousarray(x)
    dtype = x.dtype
    bias = np.zeros(0, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,) or (0,)
    return x, transform(w, dtype), bias


def unpooled_variant(variant, conv_fn, transform, prefix):
    """``{op: (forward, backward)}`` for ``conv2d`` and ``conv2d_relu`` of a Winograd variant.

    ``conv_fn(x, U, b, OH, OW, PT, PL, relu, workspace, prefix=...)`` is its convolution and
    ``transform(w, dtype)`` its filter transform (F(2x2, 3x3) here, F(4x4, 3x3) in
    :mod:`fastcnn.kernels.winograd4`). Forward and input gradient by ``conv_fn`` (the input
    gradient on ``dy`` padded by ``2 - p``, with the weights flipped and transposed); weight
    and bias gradients by :mod:`fastcnn.kernels.conv`'s im2col blocks.
    """
    def forward(x, w, b, stride, padding, workspace, need_cache, relu):
        check_domain(variant, w, stride, padding)
        x, U, bias = _prepare(x, w, b, transform)
        dtype = x.dtype
        N, H, W, C = x.shape
        OH, OW = output_hw((H, W), (3, 3), stride, padding)
        (PT, _), (PL, _) = padding
        y = conv_fn(x, U, bias, OH, OW, PT, PL, relu, workspace, prefix=prefix)
        cache = None
        if need_cache:
            w2 = np.ascontiguousarray(w, dtype=dtype).reshape(9 * C, -1)  # (9*C, F)
            cache = ((x, y if relu else None, w2, b is not None, relu, (3, 3), stride, padding, workspace), w)
        return y, cache

    def backward(dy, cache, need_dx=True):
        """Gradients ``(dx, dw, db)``: ``dx`` by Winograd, ``dw`` and ``db`` by im2col blocks
        (``dy`` masked with ``y > 0`` after a ReLU)."""
        im2col_cache, w = cache
        x, y, relu, padding, workspace = (im2col_cache[i] for i in (0, 1, 4, 7, 8))
        _, dw, db = conv._backward(dy, im2col_cache, False)
        dx = None
        if need_dx:
            dtype = x.dtype
            dy = np.ascontiguousarray(dy, dtype=dtype)
            if relu:
                dy = dy * (y > 0)  # a multiply, as relu's backward: NaN/inf in dy propagate
            (PT, _), (PL, _) = padding
            U = transform(np.asarray(w)[::-1, ::-1].transpose(0, 1, 3, 2), dtype)  # (positions, F, C)
            dx = conv_fn(dy, U, np.zeros(0, dtype), x.shape[1], x.shape[2], 2 - PT, 2 - PL, False, workspace,
                         prefix=prefix + "dx")
        return dx, dw, db

    def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
        return forward(x, w, b, stride, padding, workspace, need_cache, False)

    def conv2d_relu_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
        """``max(conv2d(x, w, b), 0)``, the ReLU applied in the output transform."""
        return forward(x, w, b, stride, padding, workspace, need_cache, True)

    conv2d_forward.__doc__ = f"``{variant}`` forward of conv2d. Shape: as :func:`fastcnn.kernels.conv.conv2d_forward`."
    return {"conv2d": (conv2d_forward, backward), "conv2d_relu": (conv2d_relu_forward, backward)}


def _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu):
    check_domain("numba:winograd", w, stride, padding)
    x, U, bias = _prepare(x, w, b)
    yp, arg, (OH, OW) = _pooled(x, U, bias, padding, pool_size, relu, workspace, keep_arg=need_cache)
    N, _, _, C = x.shape
    F = U.shape[2]
    cache = None
    if need_cache:
        w2 = np.ascontiguousarray(w, dtype=x.dtype).reshape(9 * C, F)  # (9*C, F)
        cache = (x, yp, arg, w2, b is not None, relu, (OH, OW), tuple(pool_size), (3, 3), stride, padding, workspace)
    return yp.reshape(N, -1, yp.shape[1], F), cache


def conv2d_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``numba:winograd`` forward of conv2d_maxpool2d; its backward is conv_pool's."""
    return _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, False)


def conv2d_relu_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``numba:winograd`` forward of conv2d_relu_maxpool2d; its backward is conv_pool's."""
    return _pool_forward(x, w, b, stride, padding, pool_size, workspace, need_cache, True)


#: op -> (forward, backward) of the ``numba:winograd`` variant.
VARIANTS = {
    **unpooled_variant("numba:winograd", winograd_conv, filter_transform, "wino"),
    "conv2d_maxpool2d": (conv2d_maxpool2d_forward, conv_pool.conv2d_maxpool2d_backward),
    "conv2d_relu_maxpool2d": (conv2d_relu_maxpool2d_forward, conv_pool.conv2d_relu_maxpool2d_backward),
}
