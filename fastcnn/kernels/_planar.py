"""Planar images for first layers: the "full width" trick of the direct convolution,
and the weight gradient computed the same way.

A first layer (one to three input channels) has a tiny inner dimension
``K = KH*KW*C`` (9 for a 3x3 kernel on one channel). Its im2col GEMMs are then
all packing and call overhead: tutorial_cnn's weight gradient, a 9 x 43,264 by
43,264 x 8 product, took about twice its whole forward pass. Here the image is
copied zero-padded and channel-planar (:func:`planar_image`), so that each
kernel tap is one long pass over the flat image: for the output
(:func:`fastcnn.kernels._im2col.direct_image`) and for the weight gradient
(:func:`weight_grad`), where tap ``(i, j, c)`` of filter ``f`` is the dot
product of the image shifted by ``(i, j)`` with the planar output gradient of
``f``. The passes also cover the ``KW - 1`` columns past each output row (the
"full width"); the output gradient is zero there, so they add ``x * 0``.

That is exact when the result is finite: with finite inputs the extra terms are
exact zeros. An infinite or NaN input or gradient makes some weight gradient
non-finite (``inf * 0`` is NaN even where no window reads the pixel), so the
backward passes that use :func:`weight_grad` check their few results with
:func:`finite` and then recompute them by the im2col path, which multiplies
only the pixels a window reads (no scan of the input at every step). Which of the two paths runs a layer whose input
gradient is not needed (a first layer) is measured per geometry
(:func:`use_planar`).
"""

import time

import numpy as np

from fastcnn.kernels._jit import kernel

__all__ = ["planar_image", "weight_grad", "finite", "use_planar", "HEURISTIC_MAX_WEIGHTS"]

#: Outside ``FASTCNN_PLAN=measure`` (the reproducible plan), the planar weight gradient runs a
#: layer with at most this many weights per bias, ``K*F = KH*KW*C*F`` (tutorial_cnn's 3x3 on one
#: channel into 8 filters: 72); under ``measure`` the faster path is timed for each geometry
#: (:func:`use_planar`).
HEURISTIC_MAX_WEIGHTS = 128


@kernel
def planar_image(xp, x, n, C, OH, OW, KH, KW, PT, PL):
    """Image ``n`` of ``x``: ``(N, H, W*C)`` as ``C`` zero-padded planes of ``HP x WP``
    (``HP = OH+KH-1``, ``WP = OW+KW-1``; stride 1): the flat ``(C*HP*WP,)`` array returned is
    ``x[n]`` itself when it already is one (one channel, no padding), else written into
    ``xp``: ``(>= C*HP*WP,)``."""
    _, H, WC = x.shape
    HP, WP = OH + KH - 1, OW + KW - 1
    if C == 1 and HP == H and WP == WC:
        return x[n].reshape(-1)  # (H*W,)
    zero = xp.dtype.type(0)
    W = WC // C
    for c in range(C):
        for hp in range(HP):
            h = hp - PT
            for wp in range(WP):
                w = wp - PL
                inside = 0 <= h < H and 0 <= w < W
                xp[(c * HP + hp) * WP + wp] = x[n, h, w * C + c] if inside else zero
    return xp[:C * HP * WP]


@kernel
def weight_grad(dw, src, dyc, C, KH, KW, HP, WP, L):
    """``dw``: ``(KH*KW*C, F)`` += one image's weight gradient: tap ``(i, j, c)`` of filter
    ``f`` gets the dot product of ``src[(c*HP + i)*WP + j:][:L]`` (the planar image,
    :func:`planar_image`) with ``dyc[f, :L]``, the image's output gradient in the same
    planar layout (output ``(oh, ow)`` at ``oh*WP + ow``; zero at the columns
    ``ow >= OW``). Each dot product is summed on its own, then added to ``dw``."""
    F = dyc.shape[0]
    zero = dw.dtype.type(0)
    for f in range(F):
        d = dyc[f, :L]
        for c in range(C):
            for i in range(KH):
                row = (c * HP + i) * WP
                k = (i * KW) * C + c  # tap (i, 0, c)
                if KW == 3:  # the common kernel row in one pass over d: a third of its loads
                    s0, s1, s2 = src[row:row + L], src[row + 1:row + 1 + L], src[row + 2:row + 2 + L]
                    a0 = a1 = a2 = zero
                    for t in range(L):
                        a0 += s0[t] * d[t]
                        a1 += s1[t] * d[t]
                        a2 += s2[t] * d[t]
                    dw[k, f] += a0
                    dw[k + C, f] += a1
                    dw[k + 2 * C, f] += a2
                else:
                    for j in range(KW):
                        sj = src[row + j:row + j + L]
                        a = zero
                        for t in range(L):
                            a += sj[t] * d[t]
                        dw[k + j * C, f] += a


def finite(*arrays):
    """True when no element of ``arrays`` (None skipped) is NaN or infinite."""
    return all(a is None or bool(np.isfinite(a).all()) for a in arrays)


_CHOSEN = {}  # (plan mode, Geometry) -> bool, this process


def use_planar(geometry, planar, gemm):
    """True when the planar weight gradient should run this layer (its input gradient not
    needed): under ``FASTCNN_PLAN=measure`` the faster of ``planar()`` and ``gemm()`` (each one
    whole backward pass), timed once per geometry in interleaved rounds as the planner times
    variants and kept in the plan file as ``"tuning planar_dw <geometry>"``
    (:func:`fastcnn.planner.tuned`); otherwise ``KH*KW*C*F <= HEURISTIC_MAX_WEIGHTS``."""
    from fastcnn import planner

    mode = planner.plan_mode()
    chosen = _CHOSEN.get((mode, geometry))  # every step after a geometry's first: one lookup
    if chosen is None:
        small = int(np.prod(geometry.w_shape)) <= HEURISTIC_MAX_WEIGHTS
        chosen = small if mode != "measure" else planner.tuned(
            "planar_dw " + planner.geometry_key(geometry, True), lambda: _measure(planar, gemm),
            lambda: "planar" if small else "gemm") == "planar"
        _CHOSEN[(mode, geometry)] = chosen
    return chosen


def _measure(planar, gemm):
    from fastcnn import planner

    paths = {"planar": planar, "gemm": gemm}

    def timed(name):
        start = time.perf_counter()
        paths[name]()
        return time.perf_counter() - start

    for run in paths.values():  # compile or load, fault the buffers in
        run()
    best = planner.rounds_minimum(tuple(paths), timed, min_rounds=planner.REPEATS,
                                  min_span=planner.MIN_SPAN_SECONDS, budget=planner.BUDGET_SECONDS)
    return min(paths, key=lambda name: (best[name], name)), best
