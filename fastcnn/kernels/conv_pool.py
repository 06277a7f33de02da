"""Convolution, optional ReLU and a max pool in one kernel: the conv output never reaches memory.

The blocks of :mod:`fastcnn.kernels.conv` are cut along pooling rows here: a
block is a few *units*, each unit the ``PH`` convolution rows (all ``OW``
columns) that one row of pooling windows reads. The GEMM writes the block's
convolution output into the group's own buffer, still in cache; the epilogue
takes each window's first maximum (NaN wins, as in :mod:`fastcnn.kernels.pooling`)
and writes only the pooled value, ``bias`` and ReLU applied after the max
(both commute with it), and the window index as ``int8``.

Backward rebuilds each block's gradient at the convolution output from the
pooled gradient and the cached indices (zero except at each window's maximum,
and zero where the pooled value is not positive under ReLU), then runs the
same GEMMs as :mod:`fastcnn.kernels.conv`, recomputing im2col from the input.
Neither direction stores or re-reads the convolution output: at the mnist_cnn
conv2 shape that is 9.4 MB written and read three times less per step.

The forward comes in three registry variants (:data:`VARIANTS`), all with the
same backward: ``numba:im2col`` (any geometry), ``numba:shifted`` (stride 1:
shifted GEMMs over a zero-padded copy of each image, :mod:`fastcnn.kernels._shifted`,
pooled from the full-width rows they produce; no im2col at all) and
``numba:direct`` (stride 1: direct loops on a planar copy, for a small
``KH*KW*C``). The planner picks one per geometry; :func:`heuristic` holds the
thresholds used before it measured.

Only pools with stride equal to their size and no padding are fused (every
preset's); a convolution row or column that no window covers is computed and
dropped, and gets zero gradient, as in the unfused layers.
"""

import functools

import numpy as np
from numba import prange

from fastcnn.geometry import output_hw
from fastcnn.registry import Geometry
from fastcnn.kernels import _blas, _blockgemm, _planar, _shifted
from fastcnn.kernels._im2col import direct_image, im2col_rows, im2col_rows_kmajor, scratch
from fastcnn.kernels._jit import inline_kernel, kernel, parallel_kernel
from fastcnn.kernels._shifted import frame_rows, pad_image, shifted_gemm
from fastcnn.kernels.pooling import _index_dtype, max_into

__all__ = ["conv2d_maxpool2d_forward", "conv2d_maxpool2d_backward", "conv2d_relu_maxpool2d_forward",
           "conv2d_relu_maxpool2d_backward", "planar_backward", "VARIANTS", "heuristic", "stride_one"]


@kernel
def _pool_units(yp, arg, out, b, relu, u0, u1, OW, PH, PW):
    # Pool units u0..u1 from out: (rows, F), their convolution output (unit u's
    # PH rows of OW pixels at row (u - u0)*PH*OW; OW may be a wider row, whose
    # columns past the pooling windows are never read); yp, arg: (U, OPW, F) out.
    _, OPW, F = yp.shape
    L = PH * OW
    zero = yp.dtype.type(0)
    for u in range(u0, u1):
        base = (u - u0) * L
        for pw in range(OPW):
            best, a = yp[u, pw], arg[u, pw]  # (F,) each
            first = out[base + pw * PW]  # (F,) window position 0 seeds the maximum
            for f in range(F):
                best[f] = first[f]
                a[f] = 0
            for i in range(PH):
                for j in range(PW):
                    if i == 0 and j == 0:
                        continue
                    max_into(best, a, out[base + i * OW + pw * PW + j], a.dtype.type(i * PW + j))
            for f in range(F):
                v = best[f] + b[f] if b.size else best[f]
                best[f] = zero if (relu and v <= zero) else v  # NaN passes, as in relu


@inline_kernel
def _take(v, best, k, kv):
    # The first-maximum rule of max pooling: strictly greater wins, and a NaN wins once.
    take = (v > best) | ((v != v) & (best == best))
    return (v if take else best), (kv if take else k)


@kernel
def _pool_planar(yp, arg, seg, b, relu, u0, u1, WP, PH, PW):
    # Pool units u0..u1 (one image's pooling rows, unit u0 reading convolution row 0)
    # from seg: (F, ...), the image's convolution in direct_image's planar layout;
    # yp, arg: (U, OPW, F) out. Same first-maximum rule as _pool_units. For 2x2
    # windows (every preset's) a row is first pooled by plain comparisons, which
    # vectorize, and only redone by the NaN-aware rule when it holds a NaN.
    _, OPW, F = yp.shape
    zero = yp.dtype.type(0)
    best = np.empty(OPW, dtype=yp.dtype)  # (OPW,)
    ks = np.empty(OPW, dtype=np.int32)  # (OPW,)
    for u in range(u0, u1):
        base = (u - u0) * PH * WP
        for f in range(F):
            plane = seg[f, base:]
            exact = not (PH == 2 and PW == 2)
            if not exact:
                r0, r1 = plane[:2 * OPW], plane[WP:WP + 2 * OPW]
                nan = False
                for pw in range(OPW):
                    a, c = r0[2 * pw], r1[2 * pw]
                    b_, d = r0[2 * pw + 1], r1[2 * pw + 1]
                    m, k = a, 0
                    if b_ > m:
                        m, k = b_, 1
                    if c > m:
                        m, k = c, 2
                    if d > m:
                        m, k = d, 3
                    best[pw], ks[pw] = m, k
                    nan |= (a != a) | (b_ != b_) | (c != c) | (d != d)
                exact = nan
            if exact:
                for pw in range(OPW):
                    m, k = plane[pw * PW], 0
                    for i in range(PH):
                        for j in range(PW):
                            m, k = _take(plane[i * WP + pw * PW + j], m, k, i * PW + j)
                    best[pw], ks[pw] = m, k
            bias = b[f] if b.size else zero
            for pw in range(OPW):
                v = best[pw] + bias
                yp[u, pw, f] = zero if (relu and v <= zero) else v  # NaN passes, as in relu
                arg[u, pw, f] = ks[pw]


@kernel
def _pool_planar_values(yp, seg, b, relu, u0, u1, WP, PH, PW):
    # As _pool_planar without the window indices (inference: no backward follows): each
    # window's maximum, NaN when the window holds one (the value the first-maximum rule gives),
    # written straight into yp: (U, OPW, F). The rule is written out rather than taken from
    # _take: a chain of _take calls ran tutorial_cnn's layer 1.3x slower (one thread).
    _, OPW, F = yp.shape
    zero = yp.dtype.type(0)
    for u in range(u0, u1):
        base = (u - u0) * PH * WP
        for f in range(F):
            bias = b[f] if b.size else zero
            plane = seg[f]
            for pw in range(OPW):
                o = base + pw * PW
                if PH == 2 and PW == 2:  # every preset's pool, unrolled: about 2.5x faster than the loops
                    a, c = plane[o], plane[o + 1]
                    d, e = plane[o + WP], plane[o + WP + 1]
                    m = a if (a > c) | (a != a) else c
                    m2 = d if (d > e) | (d != d) else e
                    m = m if (m > m2) | (m != m) else m2
                else:
                    m = plane[o]
                    for i in range(PH):
                        for j in range(PW):
                            v = plane[o + i * WP + j]
                            m = v if (v > m) | (v != v) else m
                v = m + bias
                yp[u, pw, f] = zero if (relu and v <= zero) else v  # NaN passes, as in relu


@parallel_kernel
def _direct_forward_kernel(yp, arg, x, wT, b, relu, xp, seg, OH, OW, PH, PW, KH, KW, PT, PL):
    # yp, arg: as _forward_kernel's; x: (N, H, W*C); wT: (F, K) the weights; b: (F,) or
    # size 0. For a small K and stride 1: whole images through xp: (G, C*HP*WP) and
    # seg: (G, F, HP*WP) (direct_image), pooled from the planar layout. An empty arg:
    # inference, the pooled values only (_pool_planar_values), no window indices.
    N = x.shape[0]
    OPH = yp.shape[0] // N
    G = xp.shape[0]
    for g in prange(G):
        for n in range(g * N // G, (g + 1) * N // G):
            direct_image(seg[g], x, n, wT, xp[g], OH, OW, KH, KW, PT, PL)
            if arg.size:
                _pool_planar(yp, arg, seg[g], b, relu, n * OPH, (n + 1) * OPH, OW + KW - 1, PH, PW)
            else:
                _pool_planar_values(yp, seg[g], b, relu, n * OPH, (n + 1) * OPH, OW + KW - 1, PH, PW)


@parallel_kernel
def _shifted_forward_kernel(yp, arg, x, w4, b, relu, frame, wo, units, OH, OW, PH, PW, PT, PL):
    # Stride 1, as shifted GEMMs (fastcnn.kernels._shifted): groups own whole images;
    # each image goes zero-padded into the group's frame: (G, frame_rows, C), then runs
    # of `units` pooling rows are convolved over the frame's full width WP into
    # wo: (G, units*PH*WP, F) and pooled (columns ow >= OW are never read).
    # yp, arg: as _forward_kernel's; x: (N, H, W*C); w4: (KH, KW, C, F); b: (F,) or size 0.
    N = x.shape[0]
    OPH = yp.shape[0] // N
    G = frame.shape[0]
    KH, KW = w4.shape[0], w4.shape[1]
    HP, WP = OH + KH - 1, OW + KW - 1
    for g in prange(G):
        for n in range(g * N // G, (g + 1) * N // G):
            pad_image(frame[g], x, n, HP, WP, PT, PL)
            for u0 in range(n * OPH, (n + 1) * OPH, units):
                u1 = min(u0 + units, (n + 1) * OPH)
                p0 = (u0 - n * OPH) * PH * WP  # the run's first full-width convolution row
                out = wo[g, :(u1 - u0) * PH * WP]  # (rows, F)
                shifted_gemm(out, frame[g], w4, p0, p0 + (u1 - u0) * PH * WP, WP)
                _pool_units(yp, arg, out, b, relu, u0, u1, WP, PH, PW)


@parallel_kernel
def _forward_kernel(yp, arg, x, w2, b, relu, kmajor, ws, wo, units, sub, OH, OW, PH, PW, KH, KW, SH, SW, PT, PL):
    # yp: (U, OPW, F) out, pooled rows U = N*OPH; arg: (U, OPW, F) out, window index;
    # x: (N, H, W*C); w2: (K, F) the weights; b: (F,) or size 0;
    # ws: (G, units*PH*OW, K) im2col blocks (as (K, rows) when kmajor);
    # wo: (G, units*PH*OW, F) the blocks' convolution output.
    N = x.shape[0]
    U = yp.shape[0]
    OPH = U // N
    G, R, K = ws.shape
    L = PH * OW  # convolution rows per unit
    for g in prange(G):
        u_lo, u_hi = g * U // G, (g + 1) * U // G
        for u0 in range(u_lo, u_hi, units):
            u1 = min(u0 + units, u_hi)
            rows = (u1 - u0) * L
            colsT = ws[g].reshape(K, R)[:, :rows]  # (K, rows), when kmajor
            cols = ws[g, :rows]  # (rows, K)
            for u in range(u0, u1):
                r = (u // OPH * OH + u % OPH * PH) * OW  # the unit's first convolution row
                t = (u - u0) * L
                if kmajor:
                    im2col_rows_kmajor(colsT[:, t:t + L], x, r, r + L, OH, OW, KH, KW, SH, SW, PT, PL)
                else:
                    im2col_rows(cols[t:t + L], x, r, r + L, OH, OW, KH, KW, SH, SW, PT, PL)
            out = wo[g, :rows]  # (rows, F)
            _blockgemm.forward_gemm(out, cols, colsT, kmajor, w2, sub)
            _pool_units(yp, arg, out, b, relu, u0, u1, OW, PH, PW)


@parallel_kernel
def _backward_kernel(dx, dw_part, db_part, dyp, yp, arg, x, wT, relu, kmajor, need_dx, ws, wdy, ones, runs, units,
                     sub_w, sub_x, OH, OW, PH, PW, KH, KW, SH, SW, PT, PL):
    # dx: (N, H, W*C) out (size 0 when not needed); dw_part: (G, K, F) out; db_part:
    # (G, 1, F) out (size 0 without bias); dyp, yp, arg: (U, OPW, F) the pooled
    # gradient, output and window indices; ws: (G, units*PH*OW, K); wdy: (G, units*PH*OW, F)
    # the blocks' gradient at the convolution output; ones: (1, units*PH*OW); wT: (F, K);
    # runs: (G, units) scratch, each unit's first convolution row.
    N = x.shape[0]
    U, OPW, F = dyp.shape
    OPH = U // N
    G = ws.shape[0]
    L = PH * OW
    zero = dyp.dtype.type(0)
    one = dyp.dtype.type(1)
    for g in prange(G):
        n0, n1 = g * N // G, (g + 1) * N // G  # whole images: dx writes stay disjoint
        _blockgemm.start_group(dx, dw_part, db_part, g, n0, n1, need_dx)
        dw = dw_part[g]
        for u0 in range(n0 * OPH, n1 * OPH, units):
            u1 = min(u0 + units, n1 * OPH)
            rows = (u1 - u0) * L
            dyb = wdy[g, :rows]  # (rows, F)
            for u in range(u0, u1):
                base = (u - u0) * L
                for i in range(PH):
                    for pw in range(OPW):
                        d, a, p = dyp[u, pw], arg[u, pw], yp[u, pw]  # (F,) each
                        for j in range(PW):
                            # Every position of the window written once: the gradient at
                            # the window's maximum, zero elsewhere (vectorized along F).
                            k = i * PW + j
                            dst = dyb[base + i * OW + pw * PW + j]  # (F,)
                            for f in range(F):
                                # A multiply, as relu's backward: NaN/inf in dy propagate.
                                v = d[f] * (one if (not relu or p[f] > zero) else zero)
                                dst[f] = v if a[f] == k else zero
                    for col in range(OPW * PW, OW):  # a column no window covers
                        dyb[base + i * OW + col] = zero
            for u in range(u0, u1):
                runs[g, u - u0] = (u // OPH * OH + u % OPH * PH) * OW
            _blockgemm.block_backward(dx, dw, db_part[g], dyb, x, wT, ws[g], ones, runs[g, :u1 - u0], L, kmajor,
                                      need_dx, sub_w, sub_x, OH, OW, KH, KW, SH, SW, PT, PL)


@parallel_kernel
def _planar_backward_kernel(dw_part, db_part, dyp, yp, arg, x, relu, xp, dyc, offsets, OH, OW, PH, PW, KH, KW, PT,
                            PL):
    # The weight gradient alone (no dx), stride 1, by planar passes (fastcnn.kernels._planar):
    # groups own whole images; each image's gradient at the convolution output goes planar
    # into dyc[g]: (F, >= L), zero except at each window's maximum (and zero where the pooled
    # value is not positive under ReLU), then weight_grad runs it against the planar image.
    # dw_part: (G, K, F) out; db_part: (G, 1, F) out or size 0; dyp, yp, arg: (U, OPW, F);
    # x: (N, H, W*C); xp: (G, >= C*HP*WP) scratch; offsets: (PH*PW,) where window position k
    # lies in the planar layout, (k // PW)*WP + k % PW (no integer division per gradient).
    N = x.shape[0]
    U, OPW, F = dyp.shape
    OPH = U // N
    G, K, _ = dw_part.shape
    C = K // (KH * KW)
    HP, WP = OH + KH - 1, OW + KW - 1
    L = (OH - 1) * WP + OW  # flat span of every output position
    zero = dyp.dtype.type(0)
    one = dyp.dtype.type(1)
    for g in prange(G):
        dw_part[g] = zero
        if db_part.size:
            db_part[g] = zero
        d = dyc[g]
        for n in range(g * N // G, (g + 1) * N // G):
            for f in range(F):
                d[f, :L] = zero
            for oph in range(OPH):
                u = n * OPH + oph
                for pw in range(OPW):
                    for f in range(F):
                        # A multiply, as relu's backward: NaN/inf in dy propagate.
                        v = dyp[u, pw, f] * (one if (not relu or yp[u, pw, f] > zero) else zero)
                        k = arg[u, pw, f]
                        d[f, oph * PH * WP + pw * PW + offsets[k]] = v
                        if db_part.size:
                            db_part[g, 0, f] += v
            src = _planar.planar_image(xp[g], x, n, C, OH, OW, KH, KW, PT, PL)
            _planar.weight_grad(dw_part[g], src, d, C, KH, KW, HP, WP, L)


#: Forward passes with a stride of 1 and at most this inner dimension
#: ``K = KH*KW*C`` (a first layer's 3x3 on one channel: 9) skip im2col and GEMM:
#: a GEMM with so short an inner dimension is all packing and overhead, and the
#: planar output of :func:`direct_image` pools without a transpose. (Without a
#: pool, the transpose back to NHWC costs what the direct loops save.)
DIRECT_MAX_K = 32


def _units(K, F, L, itemsize, U, G):
    """Pooling rows per block: about _blockgemm.BLOCK_BYTES of im2col, no more than a group's share."""
    per_unit = L * max(K, F) * itemsize
    return max(1, min(_blockgemm.BLOCK_BYTES // per_unit, -(-U // G)))


def heuristic(geometry):
    """The variant fastcnn used before it measured (fixed thresholds, the heuristic plan): shifted GEMMs
    from :data:`fastcnn.kernels._shifted.MIN_CHANNELS` input channels at stride 1, the direct
    loops up to :data:`DIRECT_MAX_K`, im2col blocks otherwise."""
    KH, KW, C, _ = geometry.w_shape
    if geometry.stride == (1, 1) and C >= _shifted.MIN_CHANNELS:
        return "numba:shifted"
    if geometry.stride == (1, 1) and KH * KW * C <= DIRECT_MAX_K:
        return "numba:direct"
    return "numba:im2col"


def stride_one(geometry):
    """Where the shifted and direct forwards apply: stride 1 (any kernel, padding, dtype)."""
    return geometry.stride == (1, 1)


def _forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu, path):
    if path != "im2col" and tuple(stride) != (1, 1):  # outside stride_one: refuse rather than misread memory
        raise ValueError(f"numba:{path} applies at stride 1 only; received stride {tuple(stride)} "
                         f"(fastcnn.registry.applicable lists the variants that do)")
    x = np.ascontiguousarray(x)
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    PH, PW = pool_size
    (SH, SW), ((PT, _), (PL, _)) = stride, padding
    OH, OW = output_hw((H, W), (KH, KW), stride, padding)
    OPH, OPW = OH // PH, OW // PW
    K, U, G, dtype = KH * KW * C, N * OPH, _blockgemm.groups(), x.dtype
    w2 = np.ascontiguousarray(w, dtype=dtype).reshape(K, F)  # (KH*KW*C, F)
    bias = np.zeros(0, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,) or (0,)
    yp = np.empty((U, OPW, F), dtype=dtype)  # (N*OPH, OPW, F)
    x3 = x.reshape(N, H, W * C)
    if path == "direct":
        HP, WP = OH + KH - 1, OW + KW - 1  # direct_image's padded frame
        xp = scratch(workspace, "xpad", (G, C * HP * WP), dtype)  # (G, C*HP*WP)
        seg = scratch(workspace, "seg", (G, F, HP * WP), dtype)  # (G, F, HP*WP)
        wT = np.ascontiguousarray(w2.T)  # (F, K)
        if not need_cache:  # inference: the pooled values only, no window indices
            none = np.empty((0, 0, 0), dtype=_index_dtype(PH * PW))
            _direct_forward_kernel(yp, none, x3, wT, bias, relu, xp, seg, OH, OW, PH, PW, KH, KW, PT, PL)
            return yp.reshape(N, OPH, OPW, F), None
    arg = np.empty((U, OPW, F), dtype=_index_dtype(PH * PW))  # (N*OPH, OPW, F) window index
    if path == "shifted":
        HP, WP = OH + KH - 1, OW + KW - 1  # the padded frame
        units = max(1, _shifted.ROWS_PER_CALL // (PH * WP))
        frame = scratch(workspace, "frame", (G, frame_rows(HP, WP, KW), C), dtype)  # (G, frame_rows, C)
        wo = scratch(workspace, "out", (G, units * PH * WP, F), dtype)  # (G, units*PH*WP, F)
        with _blas.blas_single_threaded():
            _shifted_forward_kernel(yp, arg, x3, w2.reshape(KH, KW, C, F), bias, relu, frame, wo, units,
                                    OH, OW, PH, PW, PT, PL)
    elif path == "direct":
        _direct_forward_kernel(yp, arg, x3, wT, bias, relu, xp, seg, OH, OW, PH, PW, KH, KW, PT, PL)
    else:
        units = _units(K, F, PH * OW, dtype.itemsize, U, G)
        rows = units * PH * OW
        ws = scratch(workspace, "cols", (G, rows, K), dtype)  # (G, rows, K)
        wo = scratch(workspace, "out", (G, rows, F), dtype)  # (G, rows, F)
        with _blas.blas_single_threaded():
            _forward_kernel(yp, arg, x3, w2, bias, relu, _blockgemm.kmajor(KW, C), ws, wo, units,
                            _blockgemm.forward_gemm_rows(K, F, dtype), OH, OW, PH, PW, KH, KW, SH, SW, PT, PL)
    cache = None
    if need_cache:
        cache = (x, yp, arg, w2, b is not None, relu, (OH, OW), (PH, PW), (KH, KW), stride, padding, workspace)
    return yp.reshape(N, OPH, OPW, F), cache


def _backward(dy, cache, need_dx):
    x, yp, arg, w2, has_bias, relu, (OH, OW), (PH, PW), (KH, KW), stride, padding, workspace = cache
    dyp = np.ascontiguousarray(dy, dtype=x.dtype).reshape(yp.shape)  # (N*OPH, OPW, F)
    if not need_dx and tuple(stride) == (1, 1):  # a first layer: the weight gradient alone
        pads = tuple(tuple(int(p) for p in side) for side in padding)  # hashable, as the planner keys it
        geometry = Geometry("conv2d_relu_maxpool2d" if relu else "conv2d_maxpool2d", x.shape,
                            (KH, KW, x.shape[3], w2.shape[1]), (1, 1), pads, (PH, PW), x.dtype.name)
        if _planar.use_planar(geometry, lambda: planar_backward(dyp, cache), lambda: _gemm_backward(dyp, cache, False)):
            grads = planar_backward(dyp, cache)
            if _planar.finite(*grads[1:]):  # else a NaN or inf in x or dy: the GEMMs give their exact result
                return grads
    return _gemm_backward(dyp, cache, need_dx)


def planar_backward(dy, cache):
    """``(None, dw, db)`` of a stride-1 forward's ``cache`` by the planar weight gradient
    (:mod:`fastcnn.kernels._planar`; exact where it is finite): the backward of a first layer,
    whose input gradient is not needed, where :func:`fastcnn.kernels._planar.use_planar` chose it."""
    x, yp, arg, w2, has_bias, relu, (OH, OW), (PH, PW), (KH, KW), _, ((PT, _), (PL, _)), workspace = cache
    dyp = np.ascontiguousarray(dy, dtype=x.dtype).reshape(yp.shape)  # (N*OPH, OPW, F)
    N, H, W, C = x.shape
    K, F = w2.shape
    G, dtype = _blockgemm.groups(), x.dtype
    HP, WP = OH + KH - 1, OW + KW - 1
    xp = scratch(workspace, "xpad", (G, C * HP * WP), dtype)  # (G, C*HP*WP), as the direct forward's
    dyc = scratch(workspace, "dyplanar", (G, F, OH * WP), dtype)  # (G, F, OH*WP)
    dw_part = np.empty((G, K, F), dtype=dtype)  # (G, K, F)
    db_part = np.empty((G, 1, F) if has_bias else (G, 0, 0), dtype=dtype)  # (G, 1, F)
    _planar_backward_kernel(dw_part, db_part, dyp, yp, arg, x.reshape(N, H, W * C), relu, xp, dyc,
                            _window_offsets(PH, PW, WP), OH, OW, PH, PW, KH, KW, PT, PL)
    return _blockgemm.finish_backward(None, dw_part, db_part, x.shape, (KH, KW, C, F), has_bias, False)


@functools.lru_cache(maxsize=64)
def _window_offsets(PH, PW, WP):
    """``(PH*PW,)``: where window position ``k`` lies in a planar row of width ``WP``
    (``(k // PW)*WP + k % PW``); read only."""
    k = np.arange(PH * PW)
    offsets = k // PW * WP + k % PW
    offsets.flags.writeable = False
    return offsets


def _gemm_backward(dyp, cache, need_dx):
    x, yp, arg, w2, has_bias, relu, (OH, OW), (PH, PW), (KH, KW), (SH, SW), ((PT, _), (PL, _)), workspace = cache
    N, H, W, C = x.shape
    K, F = w2.shape
    U, OPW, _ = yp.shape
    G, dtype = _blockgemm.groups(), x.dtype
    units = _units(K, F, PH * OW, dtype.itemsize, U, G)
    rows = units * PH * OW
    ws, wdy, ones, dw_part, db_part, dx = _blockgemm.backward_buffers(workspace, G, rows, rows, K, F, has_bias,
                                                                      need_dx, x.shape, dtype)
    with _blas.blas_single_threaded():
        _backward_kernel(dx, dw_part, db_part, dyp, yp, arg, x.reshape(N, H, W * C), np.ascontiguousarray(w2.T), relu,
                         _blockgemm.kmajor(KW, C), need_dx, ws, wdy, ones, np.empty((G, units), dtype=np.int64), units,
                         *_blockgemm.backward_gemm_rows(K, F, dtype),
                         OH, OW, PH, PW, KH, KW, SH, SW, PT, PL)
    return _blockgemm.finish_backward(dx, dw_part, db_part, x.shape, (KH, KW, C, F), has_bias, need_dx)


def _variant(path, relu):
    def forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
        return _forward(x, w, b, stride, padding, pool_size, workspace, need_cache, relu, path)

    name = "conv2d_relu_maxpool2d" if relu else "conv2d_maxpool2d"
    forward.__name__ = forward.__qualname__ = f"{name}_forward_{path}"
    forward.__doc__ = f"{name} forward through the {path} path (see the module docstring)."
    return forward


#: (op, variant) -> forward; every variant shares the backward of its op.
VARIANTS = {(op, "numba:" + path): _variant(path, op.startswith("conv2d_relu"))
            for op in ("conv2d_maxpool2d", "conv2d_relu_maxpool2d") for path in ("im2col", "shifted", "direct")}


def conv2d_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``max_pool2d(conv2d(x, w, b))`` with pool stride = ``pool_size`` and no pool padding,
    through the variant :func:`heuristic` picks.

    Shape: x ``(N, H, W, C)``, w ``(KH, KW, C, F)`` -> y ``(N, OH // PH, OW // PW, F)``.
    """
    path = _heuristic_path(x, w, stride, padding, pool_size)
    return _forward(x, w, b, stride, padding, pool_size, workspace, need_cache, False, path)


def conv2d_maxpool2d_backward(dy, cache, need_dx=True):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_maxpool2d_forward` from the pooled gradient ``dy``
    (im2col blocks, whichever forward made the cache)."""
    return _backward(dy, cache, need_dx)


def conv2d_relu_maxpool2d_forward(x, w, b, *, stride, padding, pool_size, workspace=None, need_cache=True):
    """``max_pool2d(relu(conv2d(x, w, b)))``, pooled as :func:`conv2d_maxpool2d_forward`."""
    path = _heuristic_path(x, w, stride, padding, pool_size)
    return _forward(x, w, b, stride, padding, pool_size, workspace, need_cache, True, path)


def conv2d_relu_maxpool2d_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv2d_relu_maxpool2d_forward`; zero where the pooled value is not positive."""
    return _backward(dy, cache, need_dx)


def _heuristic_path(x, w, stride, padding, pool_size):
    geometry = Geometry("conv2d_maxpool2d", x.shape, w.shape, tuple(stride), padding, pool_size, x.dtype.name)
    return heuristic(geometry).split(":")[1]
