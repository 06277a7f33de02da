"""Register-blocked direct convolution (variant ``numba:microkernel`` of ``conv2d`` and ``conv2d_relu``).

No im2col and no BLAS: each output row of each image is computed in tiles of
``PB`` consecutive output pixels x ``NV * W`` filters, whose accumulators stay
in vector registers for the whole reduction over the kernel's rows, columns
and input channels (NHWC: a kernel row's ``KW * C`` inputs are contiguous,
and so are the ``F`` filters of each weight, HWIO). Per reduction step the
tile loads ``NV`` weight vectors, broadcasts ``PB`` input values, and does
``PB * NV`` vector FMAs: the BLIS microkernel's shape, with the input panel
read straight from the image instead of packed. The explicit vectors are
:mod:`fastcnn.kernels._simd`'s (LLVM does not vectorize such a tile written as
scalar loops).

Where it pays: a GEMM of inner dimension ``K = KH*KW*C`` has little to work on
when ``K`` is small (a first layer: ``K = 9``), and at a few thousand output
pixels per image the BLAS call overheads count. Elsewhere it is about level
with the im2col GEMMs. The planner decides (:mod:`fastcnn.planner`); the
heuristic mode never picks it.

Tiles: :data:`TILES` lists the shapes ``(PB, NV, W)`` compiled; which is fastest
depends on the registers and the caches, so under ``FASTCNN_PLAN=measure``
each geometry's tile is timed once and kept in the plan file as
``"tuning microkernel_tile <geometry>"``; otherwise the first tile that applies
is used. The tile changes nothing in the arithmetic: every output is the bias
plus its products added in the same order (kernel row, then kernel column and
channel), whatever the tile, the thread count or the machine (given FMA).

The last tile of a row starts at ``OW - PB`` (overlapping the one before it:
its pixels are computed twice, identically), so ``OW >= PB`` is all a row
needs. Input rows are copied, one kernel's height at a time, into a group's
zero-bordered buffer (the padding), and kernel rows that fall on padding above
or below the image are skipped. Work is split into a fixed number of groups
(:func:`fastcnn.kernels._blockgemm.groups`) of whole output rows, each with
its own buffer: nothing is allocated in the parallel loop.

Gradients: those of :mod:`fastcnn.kernels.conv` (im2col blocks), from the same cache.
"""

import time

import numpy as np
from numba import prange

from fastcnn import registry
from fastcnn.geometry import output_hw
from fastcnn.kernels import _blockgemm, conv
from fastcnn.kernels._im2col import scratch
from fastcnn.kernels._jit import parallel_kernel
from fastcnn.kernels._simd import stack_array, vbcast, vfma, vload, vrelu, vstore

__all__ = ["TILES", "applies", "tile_applies", "tile_for", "direct_conv", "conv2d_forward", "conv2d_relu_forward",
           "conv2d_backward", "conv2d_relu_backward", "VARIANTS"]

#: The tile shapes compiled, ``(PB, NV, W)``: ``PB`` output pixels x ``NV`` vectors of ``W``
#: lanes (``NV * W`` filters). 16 float32 lanes are one AVX-512 register or two AVX2 ones.
#: Outside ``FASTCNN_PLAN=measure`` the first that applies is used.
TILES = ((4, 2, 16), (6, 2, 16), (4, 4, 8), (6, 2, 8))


def tile_applies(tile, F, OW):
    """A tile computes whole vectors of filters (``F % (NV*W) == 0``) and needs ``OW >= PB``."""
    PB, NV, W = tile
    return F % (NV * W) == 0 and OW >= PB


def _output_width(geometry):
    _, H, W, _ = geometry.x_shape
    KH, KW = geometry.w_shape[:2]
    return output_hw((H, W), (KH, KW), geometry.stride, geometry.padding)[1]


def _requirement():
    """What :func:`applies` asks, in words, from :data:`TILES`."""
    needs = {}
    for PB, NV, W in TILES:
        needs[NV * W] = min(PB, needs.get(NV * W, PB))
    return " or ".join(f"F % {fb} == 0 with at least {pb} output columns" for fb, pb in sorted(needs.items(),
                                                                                               reverse=True))


def applies(geometry):
    """Some tile of :data:`TILES` applies (:func:`tile_applies`): with the tiles compiled, ``F`` a
    multiple of 32 and at least 4 output columns, or a multiple of 16 and at least 6."""
    F = geometry.w_shape[3]
    OW = _output_width(geometry)
    return any(tile_applies(t, F, OW) for t in TILES)


def _tile_kernel(PB, NV, W):
    FB = NV * W  # filters per tile
    SIZE = PB * FB  # accumulators per tile

    def tile_rows(y, x, w, b, relu, xr, C, OH, OW, KH, KW, SH, SW, PT, PL):
        # y: (N*OH, OW*F) out; x: (N, H, W*C); w: (KH*KW*C*F,) the HWIO weights flat;
        # b: (F,) (zeros without bias); xr: (G, KH, WP*C) scratch, one kernel's height of
        # input rows per group with PL zero columns before the image and any needed after.
        G = xr.shape[0]
        N, H, WC = x.shape
        F = b.shape[0]
        Q = KW * C  # one kernel row's inputs (and weight rows), contiguous
        T = N * OH
        zero = b.dtype.type(0)
        for g in prange(G):
            rows = xr[g]
            for i in range(KH):
                row = rows[i]
                for t in range(row.shape[0]):
                    row[t] = zero
            acc = stack_array(SIZE, b)
            for task in range(g * T // G, (g + 1) * T // G):
                n = task // OH
                oh = task - n * OH
                h0 = oh * SH - PT
                i0, i1 = max(0, -h0), min(KH, H - h0)  # kernel rows on the image
                for i in range(i0, i1):
                    src, dst = x[n, h0 + i], rows[i]
                    for t in range(WC):
                        dst[PL * C + t] = src[t]
                out = y[task]
                for f0 in range(0, F, FB):
                    for start in range(0, OW, PB):
                        ow0 = min(start, OW - PB)
                        for v in range(NV):
                            bias = vload(b, f0 + v * W, W)
                            for p in range(PB):
                                vstore(acc, (p * NV + v) * W, bias)
                        for i in range(i0, i1):
                            xrow = rows[i]
                            xb = ow0 * SW * C
                            wb = i * Q * F + f0
                            for q in range(Q):
                                for v in range(NV):
                                    wv = vload(w, wb + q * F + v * W, W)
                                    for p in range(PB):
                                        k = (p * NV + v) * W
                                        vstore(acc, k, vfma(vbcast(xrow, xb + p * SW * C + q, W), wv,
                                                            vload(acc, k, W)))
                        for p in range(PB):
                            for v in range(NV):
                                a = vload(acc, (p * NV + v) * W, W)
                                if relu:
                                    a = vrelu(a)
                                vstore(out, (ow0 + p) * F + f0 + v * W, a)

    tile_rows.__name__ = tile_rows.__qualname__ = f"tile_rows_{PB}x{NV}x{W}"
    return parallel_kernel(tile_rows)


_KERNELS = {tile: _tile_kernel(*tile) for tile in TILES}


def direct_conv(x, w, b, stride, padding, relu, tile, workspace=None):
    """``y`` ``(N, OH, OW, F)``: the convolution of contiguous NHWC ``x`` with HWIO ``w``, plus ``b``
    (``(F,)`` or None), ReLU'd when ``relu``, in tiles of shape ``tile`` (one of :data:`TILES`,
    applying: :func:`tile_applies`)."""
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (SH, SW), ((PT, _), (PL, _)) = stride, padding
    OH, OW = output_hw((H, W), (KH, KW), stride, padding)
    if tile not in _KERNELS or not tile_applies(tile, F, OW):
        raise ValueError(f"numba:microkernel tile {tile} does not apply to {F} filters and {OW} output columns; "
                         f"expected one of {TILES} with F % (NV*W) == 0 and OW >= PB")
    dtype = x.dtype
    wflat = np.ascontiguousarray(w, dtype=dtype).reshape(-1)  # (KH*KW*C*F,)
    bias = np.zeros(F, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)  # (F,)
    WP = max(PL + W, (OW - 1) * SW + KW)  # padded row width (pixels)
    xr = scratch(workspace, "mkrows", (_blockgemm.groups(), KH, WP * C), dtype)  # (G, KH, WP*C)
    y = np.empty((N * OH, OW * F), dtype=dtype)  # (N*OH, OW*F)
    _KERNELS[tile](y, x.reshape(N, H, W * C), wflat, bias, relu, xr, C, OH, OW, KH, KW, SH, SW, PT, PL)
    return y.reshape(N, OH, OW, F)


_CHOSEN = {}  # (plan mode, Geometry) -> tile, this process


def tile_for(geometry, run):
    """The tile for ``geometry`` (a ``conv2d``/``conv2d_relu`` :class:`~fastcnn.registry.Geometry`):
    under ``FASTCNN_PLAN=measure`` the fastest applying tile, ``run(tile)`` (one forward pass)
    timed in interleaved rounds as the planner times variants, once per geometry, and kept in
    the plan file (:func:`fastcnn.planner.tuned`); otherwise the first applying one of :data:`TILES`."""
    from fastcnn import planner

    mode = planner.plan_mode()
    chosen = _CHOSEN.get((mode, geometry))
    if chosen is None:
        candidates = [t for t in TILES if tile_applies(t, geometry.w_shape[3], _output_width(geometry))]
        chosen = candidates[0]
        if mode == "measure" and len(candidates) > 1:
            known = planner.tuned("microkernel_tile " + planner.geometry_key(geometry, False),
                                  lambda: _measure(candidates, run), lambda: list(chosen))
            if isinstance(known, list) and tuple(known) in candidates:  # a plan file from other TILES: ignored
                chosen = tuple(known)
        _CHOSEN[(mode, geometry)] = chosen
    return chosen


def _measure(candidates, run):
    from fastcnn import planner

    def timed(tile):
        start = time.perf_counter()
        run(tile)
        return time.perf_counter() - start

    for tile in candidates:  # compile or load
        run(tile)
    best = planner.rounds_minimum(candidates, timed, min_rounds=planner.REPEATS, min_span=planner.MIN_SPAN_SECONDS,
                                  budget=planner.BUDGET_SECONDS)
    fastest = min(candidates, key=lambda t: (best[t], t))
    return list(fastest), {"x".join(map(str, t)): s for t, s in best.items()}


_CHECKED = {}  # (op, shapes, dtype, stride, padding) -> Geometry that applies, this process


def _checked_geometry(op, x, w, stride, padding):
    """The call's :class:`~fastcnn.registry.Geometry`, checked against :func:`applies` on the first
    call of each geometry only (every later call of a layer: one dictionary lookup, not the ~10 µs
    of building and checking it)."""
    try:
        key = (op, x.shape, w.shape, x.dtype, stride, padding)
        geometry = _CHECKED.get(key)
    except TypeError:  # stride or padding given as lists: not hashable, checked every call
        key = geometry = None
    if geometry is None:
        geometry = registry.geometry_of(op, (x, w), {"stride": stride, "padding": padding})
        if not applies(geometry):
            raise ValueError(f"numba:microkernel needs {_requirement()}; received weights {tuple(w.shape)} and "
                             f"input {tuple(x.shape)} (fastcnn.registry.applicable lists the variants that apply)")
        if key is not None:
            _CHECKED[key] = geometry
    return geometry


def _forward(op, x, w, b, stride, padding, workspace, need_cache):
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)  # once: direct_conv and the cache use it as it is
    relu = op == "conv2d_relu"
    geometry = _checked_geometry(op, x, w, stride, padding)
    tile = tile_for(geometry, lambda t: direct_conv(x, w, b, stride, padding, relu, t, workspace))
    y = direct_conv(x, w, b, stride, padding, relu, tile, workspace)
    cache = None
    if need_cache:
        KH, KW, C, F = w.shape
        cache = (x, y if relu else None, w.reshape(KH * KW * C, F), b is not None, relu, (KH, KW), stride, padding,
                 workspace)
    return y, cache


def conv2d_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """``numba:microkernel`` forward of conv2d. Shapes: as :func:`fastcnn.kernels.conv.conv2d_forward`."""
    return _forward("conv2d", x, w, b, stride, padding, workspace, need_cache)


def conv2d_relu_forward(x, w, b, *, stride, padding, workspace=None, need_cache=True):
    """``max(conv2d(x, w, b), 0)``, the ReLU applied as each tile is written."""
    return _forward("conv2d_relu", x, w, b, stride, padding, workspace, need_cache)


#: The gradients: :mod:`fastcnn.kernels.conv`'s, from the same cache.
conv2d_backward = conv.conv2d_backward
conv2d_relu_backward = conv.conv2d_relu_backward

#: op -> (forward, backward) of the ``numba:microkernel`` variant.
VARIANTS = {
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv2d_relu": (conv2d_relu_forward, conv2d_relu_backward),
}
